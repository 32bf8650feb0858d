//! The instance agent (`tandem agent`): supervises PostgreSQL, probes it and
//! serves the agent HTTP API. Does I/O.

mod actions;
mod bootstrap;
pub mod client;
mod config;
mod epoch;
mod error;
mod expect;
mod fence;
mod http;
mod judge;
mod lease;
mod metrics;
mod ops;
mod peers;
mod probe;
mod standby;
mod state;
mod stopped;
mod supervisor;
mod vouch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

pub use config::Config;
pub use error::{AgentError, BadRequest, BadTarget, ConfigError, Conflict, Unavailable};
pub use lease::FENCE_LEAD_MS;

/// Flags of `tandem agent`; every one has an environment fallback (the agent's configuration contract).
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// DbCluster name.
    #[arg(long, env = "TANDEM_CLUSTER")]
    pub cluster: String,
    /// Instance (pod) name; also the standby's application_name and, with `-` as `_`, its slot name.
    #[arg(long, env = "TANDEM_INSTANCE")]
    pub instance: String,
    /// Namespace (optional locally).
    #[arg(long, env = "TANDEM_NAMESPACE")]
    pub namespace: Option<String>,
    /// PGDATA.
    #[arg(long, env = "TANDEM_DATA_DIR")]
    pub data_dir: PathBuf,
    /// postgres port.
    #[arg(long, env = "TANDEM_PG_PORT", default_value_t = 5432)]
    pub pg_port: u16,
    /// postgres listen_addresses.
    #[arg(long, env = "TANDEM_PG_LISTEN", default_value = "*")]
    pub pg_listen: String,
    /// Address of the agent's HTTP API.
    #[arg(long, env = "TANDEM_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    /// The host other members use to reach this postgres.
    #[arg(long, env = "TANDEM_ADVERTISE_HOST", default_value = "127.0.0.1")]
    pub advertise_host: String,
    /// File holding the bearer token of the agent API.
    #[arg(long, env = "TANDEM_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The bearer token itself (prefer the file or the environment).
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Superuser name.
    #[arg(long, env = "TANDEM_SUPERUSER", default_value = "postgres")]
    pub superuser: String,
    /// File holding the superuser password.
    #[arg(long, env = "TANDEM_SUPERUSER_PASSWORD_FILE")]
    pub superuser_password_file: Option<PathBuf>,
    /// The superuser password itself.
    #[arg(long, env = "TANDEM_SUPERUSER_PASSWORD", hide_env_values = true)]
    pub superuser_password: Option<String>,
    /// Replication role.
    #[arg(long, env = "TANDEM_REPLICATION_USER", default_value = "replicator")]
    pub replication_user: String,
    /// File holding the replication password.
    #[arg(long, env = "TANDEM_REPLICATION_PASSWORD_FILE")]
    pub replication_password_file: Option<PathBuf>,
    /// The replication password itself.
    #[arg(long, env = "TANDEM_REPLICATION_PASSWORD", hide_env_values = true)]
    pub replication_password: Option<String>,
    /// When the data directory is empty: `host:port` of the primary to clone from; absent or empty = initdb as the primary.
    #[arg(long, env = "TANDEM_BOOTSTRAP_FROM")]
    pub bootstrap_from: Option<String>,
    /// Instance name of the bootstrap primary (default: the first DNS label of its host).
    #[arg(long, env = "TANDEM_BOOTSTRAP_FROM_NAME")]
    pub bootstrap_from_name: Option<String>,
    /// Extra postgresql.conf lines rendered by the operator, included by the agent.
    #[arg(long, env = "TANDEM_PG_CONFIG_FILE")]
    pub pg_config_file: Option<PathBuf>,
    /// PostgreSQL binaries; else `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin.
    #[arg(long, env = "PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// User that runs postgres and its tools; default `postgres` when running as root.
    #[arg(long, env = "TANDEM_RUN_AS")]
    pub run_as: Option<String>,
    /// Logging (default format: text).
    #[command(flatten)]
    pub log: crate::logging::LogArgs,
    /// Directory for postgres' socket and the password file (default: a fresh one under the temp dir).
    #[arg(long, env = "TANDEM_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// archive_ready check: WARNING from this many ready files.
    #[arg(long, env = "TANDEM_ARCHIVE_READY_WARNING", default_value_t = 64)]
    pub archive_ready_warning: i64,
    /// archive_ready check: CRITICAL from this many ready files.
    #[arg(long, env = "TANDEM_ARCHIVE_READY_CRITICAL", default_value_t = 128)]
    pub archive_ready_critical: i64,
    /// replication_lag check: WARNING from this many bytes.
    #[arg(long, env = "TANDEM_LAG_WARNING_BYTES", default_value_t = 16 << 20)]
    pub lag_warning_bytes: i64,
    /// replication_lag check: CRITICAL from this many bytes.
    #[arg(long, env = "TANDEM_LAG_CRITICAL_BYTES", default_value_t = 64 << 20)]
    pub lag_critical_bytes: i64,
    /// How often postgres is probed (role, LSNs, replication, checks); also right after every action.
    #[arg(long, env = "TANDEM_PROBE_INTERVAL", default_value = "1s")]
    pub probe_interval: crate::api::DurationString,
    /// Default timeout of each stop step (smart, fast, immediate).
    #[arg(long, env = "TANDEM_STOP_TIMEOUT", default_value = "30s")]
    pub stop_timeout: crate::api::DurationString,
    /// How long postgres may take to accept connections after a start.
    #[arg(long, env = "TANDEM_START_TIMEOUT", default_value = "120s")]
    pub start_timeout: crate::api::DurationString,
}

/// Run the agent until SIGTERM or SIGINT; postgres is stopped (fast) before it returns.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    args.log.init(
        crate::logging::LogFormat::Text,
        crate::logging::Output::Stderr,
    )?;
    let cfg = Config::from_args(&args)?;
    let (crashed_tx, crashed_rx) = tokio::sync::mpsc::unbounded_channel();
    let agent = Arc::new(state::Agent::new(cfg, crashed_tx)?);
    tracing::info!(
        cluster = %agent.cfg.cluster,
        instance = %agent.cfg.instance,
        data_dir = %agent.cfg.data_dir.display(),
        listen = %agent.cfg.listen,
        "agent starting"
    );
    let listener = tokio::net::TcpListener::bind(agent.cfg.listen).await?;
    let server = tokio::spawn(http::serve(agent.clone(), listener));
    tokio::spawn(probe::run(agent.clone()));
    tokio::spawn(expect::run(agent.clone()));
    tokio::spawn(supervisor::restarter(agent.clone(), crashed_rx));
    tokio::spawn(bootstrap::run(agent.clone()));
    tokio::spawn(fence::run(agent.clone()));
    tokio::spawn(peers::run(agent.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        r = server => tracing::error!(result = ?r.map(|r| r.map_err(|e| e.to_string())), "HTTP server ended"),
    }
    agent.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Command;

    #[test]
    fn every_agent_flag_has_an_env_fallback() {
        let cmd = AgentArgs::augment_args(Command::new("agent"));
        let mut n = 0;
        for arg in cmd.get_arguments() {
            if arg.get_id() == "help" {
                continue;
            }
            n += 1;
            assert!(arg.get_env().is_some(), "--{} has no env", arg.get_id());
        }
        assert!(n >= 20);
    }

    #[test]
    fn contract_env_names_are_used() {
        let cmd = AgentArgs::augment_args(Command::new("agent"));
        let envs: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        for want in [
            "TANDEM_CLUSTER",
            "TANDEM_INSTANCE",
            "TANDEM_NAMESPACE",
            "TANDEM_DATA_DIR",
            "TANDEM_PG_PORT",
            "TANDEM_PG_LISTEN",
            "TANDEM_LISTEN",
            "TANDEM_ADVERTISE_HOST",
            "TANDEM_TOKEN_FILE",
            "TANDEM_TOKEN",
            "TANDEM_SUPERUSER",
            "TANDEM_SUPERUSER_PASSWORD_FILE",
            "TANDEM_SUPERUSER_PASSWORD",
            "TANDEM_REPLICATION_USER",
            "TANDEM_REPLICATION_PASSWORD_FILE",
            "TANDEM_REPLICATION_PASSWORD",
            "TANDEM_BOOTSTRAP_FROM",
            "TANDEM_PG_CONFIG_FILE",
            "PG_BIN",
            "TANDEM_RUN_AS",
            "TANDEM_LOG_FORMAT",
            "TANDEM_LOG_FILTER",
        ] {
            assert!(envs.iter().any(|e| e == want), "{want} missing");
        }
    }
}
