//! Flags and exit codes shared by the `tandem local` command line and
//! `local up` (so `up` does not depend on the command line). No I/O.

use std::path::PathBuf;

use clap::Args;

/// Exit code of a command that succeeded.
pub const EXIT_OK: i32 = 0;
/// Exit code of a request that was refused or failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code of a usage error.
pub const EXIT_USAGE: i32 = 2;

/// `--dir`, common to every verb.
#[derive(Args, Debug, Clone)]
pub struct DirArg {
    /// Directory of the local cluster (data directories, state.json, logs).
    #[arg(long, env = "TANDEM_LOCAL_DIR")]
    pub dir: PathBuf,
}

/// Flags of `tandem local up`.
#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// DbCluster manifest (Kubernetes-only fields are ignored).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Fixed port of the rw endpoint.
    #[arg(long)]
    pub rw_port: Option<u16>,
    /// Fixed port of the ro endpoint.
    #[arg(long)]
    pub ro_port: Option<u16>,
    /// Directory of the PostgreSQL binaries.
    #[arg(long, env = "PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// User that runs postgres and its tools (default postgres when run as root).
    #[arg(long, env = "TANDEM_RUN_AS")]
    pub run_as: Option<String>,
    /// Logging (default format: text; to standard error).
    #[command(flatten)]
    pub log: crate::logging::LogArgs,
}

/// A flag value read as a manifest spells it (`sync`, `remote_write`,
/// `required`…): the spec's own serde names, so the CLI and the CRD agree.
pub fn spec_value<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|e| e.to_string())
}
