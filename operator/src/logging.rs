//! One logging set-up for every long-running subcommand (`operator`,
//! `agent`, `local up`): one filter, `--log-filter` / `TANDEM_LOG_FILTER`
//! (with `RUST_LOG` as a fallback), and `--log-format json|text`, parsed once
//! by clap. Installs the global tracing subscriber; no other I/O.

use anyhow::Context as _;
use clap::{Args, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, the span's fields (cluster, instance, …) included.
    Json,
    /// Human-readable lines.
    Text,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Standard output (the operator: its only output is logs).
    Stdout,
    /// Standard error (the agent and `local up`, whose stdout carries other output).
    Stderr,
}

/// The filter when neither `--log-filter`, `TANDEM_LOG_FILTER` nor `RUST_LOG` is set.
pub const DEFAULT_FILTER: &str = "info,tower_http=warn,hyper=warn,reqwest=warn";

/// Logging flags, flattened into each long-running subcommand.
#[derive(Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// Log filter (tracing EnvFilter syntax, e.g. `info,tandem=debug`); when
    /// unset, `RUST_LOG`, else `info` (HTTP client and server crates at `warn`).
    #[arg(long, env = "TANDEM_LOG_FILTER")]
    pub log_filter: Option<String>,

    /// Log format: `json` or `text` (default: `json` for `operator`, `text` otherwise).
    #[arg(long, env = "TANDEM_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// The fallback filter; documented with `--log-filter`, not a flag of its own.
    #[arg(long = "rust-log", env = "RUST_LOG", hide = true)]
    pub rust_log: Option<String>,
}

impl LogArgs {
    /// The filter in force: the flag or `TANDEM_LOG_FILTER`, else `RUST_LOG`, else the default.
    pub fn filter(&self) -> &str {
        self.log_filter
            .as_deref()
            .or(self.rust_log.as_deref())
            .unwrap_or(DEFAULT_FILTER)
    }

    /// Install the global subscriber; `format` applies when none was given.
    /// Already installed (tests, a second call) is fine.
    pub fn init(&self, format: LogFormat, output: Output) -> anyhow::Result<()> {
        let filter = tracing_subscriber::EnvFilter::try_new(self.filter())
            .with_context(|| format!("invalid --log-filter {:?}", self.filter()))?;
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        let format = self.log_format.unwrap_or(format);
        let terminal = match output {
            Output::Stdout => std::io::IsTerminal::is_terminal(&std::io::stdout()),
            Output::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        let _ = match (format, output) {
            (LogFormat::Json, Output::Stdout) => builder.json().flatten_event(true).try_init(),
            (LogFormat::Json, Output::Stderr) => builder
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr)
                .try_init(),
            (LogFormat::Text, Output::Stdout) => builder.with_ansi(terminal).try_init(),
            (LogFormat::Text, Output::Stderr) => builder
                .with_ansi(terminal)
                .with_writer(std::io::stderr)
                .try_init(),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn the_flag_wins_over_rust_log_which_wins_over_the_default() {
        let cli = Cli::parse_from(["t", "--log-filter", "debug", "--rust-log", "trace"]);
        assert_eq!(cli.log.filter(), "debug");
        let cli = Cli::parse_from(["t", "--rust-log", "trace"]);
        assert_eq!(cli.log.filter(), "trace");
        let cli = Cli::parse_from(["t"]);
        assert_eq!(cli.log.filter(), DEFAULT_FILTER);
    }

    #[test]
    fn the_format_is_json_or_text() {
        let cli = Cli::parse_from(["t", "--log-format", "json"]);
        assert_eq!(cli.log.log_format, Some(LogFormat::Json));
        assert!(Cli::try_parse_from(["t", "--log-format", "yaml"]).is_err());
    }

    #[test]
    fn a_bad_filter_is_refused() {
        let log = LogArgs {
            log_filter: Some("info,=[".into()),
            ..LogArgs::default()
        };
        assert!(log.init(LogFormat::Text, Output::Stderr).is_err());
    }
}
