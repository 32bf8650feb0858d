//! `kubectl tandem …`: the `tandem` binary as a kubectl plugin (DESIGN.md §1
//! row 19). It answers as `kubectl-tandem` (a symlink on PATH) or as `tandem
//! kubectl …`. `status` and `history` print what the DbCluster's status
//! says, with the table `tandem local status` prints; the other verbs set the
//! request annotations, wait for the operator's answer in status and exit as
//! the local CLI does: 0 done, 1 refused or failed (the reason on stderr), 2
//! usage. Does Kubernetes API I/O.

mod answer;
mod client;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::api::{keys, DbCluster, ReplicationMode};
use crate::local::args::{EXIT_FAILED, EXIT_OK};
use crate::local::report::{print_table, StatusReport};

pub use answer::{Answer, Progress, Tracker};
pub use client::{PluginError, Target};

/// The rejoin dry-run annotation, `tandem.dev/rejoin-dry-run=<instance>`:
/// the operator answers it once the engine reads it (DESIGN.md §1 row 9).
pub const ANN_REJOIN_DRY_RUN: &str = "tandem.dev/rejoin-dry-run";

/// `kubectl tandem` invoked as `kubectl-tandem` (argv[0]).
#[derive(Parser, Debug)]
#[command(
    name = "kubectl tandem",
    version,
    about = "Drive tandem DbClusters: status, switchover, promote, pause, restart, rejoin, re-clone, history"
)]
pub struct PluginCli {
    #[command(flatten)]
    pub args: KubectlArgs,
}

/// Flags and verb of `kubectl tandem`.
#[derive(Args, Debug, Clone)]
pub struct KubectlArgs {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace of the DbCluster (default: the context's namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// How long a request may take before the command gives up waiting (the request stays).
    #[arg(long, global = true, default_value = "10m")]
    pub timeout: crate::api::DurationString,
    #[command(subcommand)]
    pub verb: Verb,
}

/// The verbs of `kubectl tandem`.
#[derive(Subcommand, Debug, Clone)]
pub enum Verb {
    /// Print the status table (or JSON) of a DbCluster.
    Status {
        /// DbCluster name.
        name: String,
        /// Print JSON instead of the table (the shape of `tandem local status --json`).
        #[arg(long)]
        json: bool,
    },
    /// Switch the primary over to another instance.
    Switchover {
        /// DbCluster name.
        name: String,
        /// Instance to promote, or `any` to let tandem pick.
        #[arg(long, default_value = "any")]
        to: String,
        /// Run the prechecks only and report them; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Override the archive-backlog precheck (and nothing else).
        #[arg(long)]
        force: bool,
    },
    /// Make a standby primary while the primary is down or unreachable (also while paused).
    Promote {
        /// DbCluster name.
        name: String,
        /// Instance to promote.
        instance: String,
        /// Promote a learner, a standby behind others, or (sync, required) one that was not synchronous.
        #[arg(long)]
        force: bool,
    },
    /// Pause automation: no automatic failover or rejoin.
    Pause {
        /// DbCluster name.
        name: String,
    },
    /// Resume automation.
    Unpause {
        /// DbCluster name.
        name: String,
    },
    /// Restart an instance, or all of them (standbys first).
    Restart {
        /// DbCluster name.
        name: String,
        /// Instance name, or `all` (the default).
        #[arg(default_value = "all")]
        instance: String,
    },
    /// Rejoin an instance as a standby of the primary (rewinding if needed).
    Rejoin {
        /// DbCluster name.
        name: String,
        /// Instance name.
        instance: String,
        /// Only say whether a rewind is needed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-clone an instance from the primary with pg_basebackup.
    Reclone {
        /// DbCluster name.
        name: String,
        /// Instance name.
        instance: String,
    },
    /// Print the last transitions and requests.
    History {
        /// DbCluster name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What a verb asks of the operator: annotations to set, and which of them
/// the operator removes once it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// Annotations to set (`Some`) or remove (`None`: a `tandem.dev/force`
    /// left from an earlier request must not force this one).
    pub set: Vec<(&'static str, Option<String>)>,
    /// The annotation whose removal says the operator answered.
    pub answered_when_gone: &'static str,
}

impl Verb {
    /// The DbCluster the verb names.
    pub fn cluster(&self) -> &str {
        match self {
            Verb::Status { name, .. }
            | Verb::Switchover { name, .. }
            | Verb::Promote { name, .. }
            | Verb::Pause { name }
            | Verb::Unpause { name }
            | Verb::Restart { name, .. }
            | Verb::Rejoin { name, .. }
            | Verb::Reclone { name, .. }
            | Verb::History { name, .. } => name,
        }
    }

    /// The request annotations of a request verb (None for status, history, pause, unpause).
    pub fn ask(&self) -> Option<Ask> {
        let force = |f: bool| Some((keys::ANN_FORCE, f.then(|| "true".to_string())));
        let (key, value, extra) = match self {
            Verb::Switchover {
                to, dry_run: true, ..
            } => (keys::ANN_SWITCHOVER_DRY_RUN, to.clone(), None),
            Verb::Switchover { to, force: f, .. } => (keys::ANN_SWITCHOVER, to.clone(), force(*f)),
            Verb::Promote {
                instance, force: f, ..
            } => (keys::ANN_PROMOTE, instance.clone(), force(*f)),
            Verb::Restart { instance, .. } => (keys::ANN_RESTART, instance.clone(), None),
            Verb::Rejoin {
                instance,
                dry_run: true,
                ..
            } => (ANN_REJOIN_DRY_RUN, instance.clone(), None),
            Verb::Rejoin { instance, .. } => (keys::ANN_REJOIN, instance.clone(), None),
            Verb::Reclone { instance, .. } => (keys::ANN_RECLONE, instance.clone(), None),
            Verb::Status { .. }
            | Verb::History { .. }
            | Verb::Pause { .. }
            | Verb::Unpause { .. } => return None,
        };
        let mut set = vec![(key, Some(value))];
        set.extend(extra);
        Some(Ask {
            set,
            answered_when_gone: key,
        })
    }
}

/// The status report of a DbCluster, as `kubectl tandem status` prints it.
pub fn report(dc: &DbCluster, now: jiff::Timestamp) -> StatusReport {
    let name = dc.metadata.name.clone().unwrap_or_default();
    let mode = match dc.spec.replication.mode {
        ReplicationMode::Async => "async",
        ReplicationMode::Sync => "sync",
    };
    let status = dc.status.clone().unwrap_or_default();
    StatusReport::from_status(&name, mode, &status, now)
}

/// Print the history of a status as a table.
pub fn print_history(history: &[crate::api::HistoryEntry], out: &mut dyn std::io::Write) {
    let header = [
        "Started", "Kind", "From", "To", "Outcome", "Duration", "Message",
    ];
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|e| {
            vec![
                e.started_at.clone(),
                e.kind.to_string(),
                e.from.clone().unwrap_or_default(),
                e.to.clone().unwrap_or_default(),
                e.outcome.to_string(),
                format!("{:.1}s", e.duration_ms as f64 / 1000.0),
                e.message.clone(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let _ = writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    );
    for row in rows {
        let _ = writeln!(out, "{}", line(row));
    }
    if history.is_empty() {
        let _ = writeln!(out, "(no transitions yet)");
    }
}

/// Run `kubectl tandem`; returns the exit code.
pub async fn run(args: KubectlArgs) -> i32 {
    let timeout = args.timeout.duration();
    let target = match Target::connect(
        args.kubeconfig.as_deref(),
        args.context.as_deref(),
        args.namespace.as_deref(),
        args.verb.cluster(),
    )
    .await
    {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    match run_verb(&target, &args.verb, timeout).await {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn fail(e: &PluginError) -> i32 {
    eprintln!("{e}");
    if let Some(hint) = e.hint() {
        eprintln!("  {hint}");
    }
    EXIT_FAILED
}

fn print_answer(a: &Answer) -> i32 {
    match a {
        Answer::Done { message, detail } => {
            println!("{message}");
            for l in detail {
                println!("  {l}");
            }
            EXIT_OK
        }
        Answer::Refused { message, detail } => {
            eprintln!("{message}");
            for l in detail {
                eprintln!("  {l}");
            }
            EXIT_FAILED
        }
    }
}

async fn run_verb(t: &Target, verb: &Verb, timeout: Duration) -> Result<i32, PluginError> {
    match verb {
        Verb::Status { json, .. } => {
            let dc = t.get().await?;
            let r = report(&dc, jiff::Timestamp::now());
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).map_err(PluginError::Encode)?
                );
            } else {
                print_table(&r, &mut std::io::stdout());
            }
            Ok(EXIT_OK)
        }
        Verb::History { json, .. } => {
            let dc = t.get().await?;
            let history = dc.status.map(|s| s.history).unwrap_or_default();
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&history).map_err(PluginError::Encode)?
                );
            } else {
                print_history(&history, &mut std::io::stdout());
            }
            Ok(EXIT_OK)
        }
        Verb::Pause { .. } => Ok(print_answer(&t.pause(true, timeout).await?)),
        Verb::Unpause { .. } => Ok(print_answer(&t.pause(false, timeout).await?)),
        other => {
            let Some(ask) = other.ask() else {
                return Ok(EXIT_OK);
            };
            Ok(print_answer(&t.request(&ask, timeout).await?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> KubectlArgs {
        let mut argv = vec!["kubectl-tandem"];
        argv.extend_from_slice(args);
        PluginCli::try_parse_from(argv).expect("parses").args
    }

    #[test]
    fn verbs_set_the_annotations_of_the_design() {
        let ask = |a: &[&str]| parse(a).verb.ask().expect("a request");
        assert_eq!(
            ask(&["switchover", "main", "--to", "main-1"]).set,
            vec![
                (keys::ANN_SWITCHOVER, Some("main-1".to_string())),
                (keys::ANN_FORCE, None)
            ]
        );
        assert_eq!(
            ask(&["switchover", "main", "--force"]).set,
            vec![
                (keys::ANN_SWITCHOVER, Some("any".to_string())),
                (keys::ANN_FORCE, Some("true".to_string()))
            ]
        );
        let dry = ask(&["switchover", "main", "--to", "main-2", "--dry-run"]);
        assert_eq!(
            dry.set,
            vec![(keys::ANN_SWITCHOVER_DRY_RUN, Some("main-2".to_string()))]
        );
        assert_eq!(dry.answered_when_gone, keys::ANN_SWITCHOVER_DRY_RUN);
        assert_eq!(
            ask(&["promote", "main", "main-2", "--force"]).set,
            vec![
                (keys::ANN_PROMOTE, Some("main-2".to_string())),
                (keys::ANN_FORCE, Some("true".to_string()))
            ]
        );
        assert_eq!(
            ask(&["restart", "main"]).set,
            vec![(keys::ANN_RESTART, Some("all".to_string()))]
        );
        assert_eq!(
            ask(&["rejoin", "main", "main-1", "--dry-run"]).set,
            vec![(ANN_REJOIN_DRY_RUN, Some("main-1".to_string()))]
        );
        assert_eq!(
            ask(&["reclone", "main", "main-1"]).set,
            vec![(keys::ANN_RECLONE, Some("main-1".to_string()))]
        );
        assert!(parse(&["status", "main"]).verb.ask().is_none());
    }

    #[test]
    fn kubectl_flags_go_anywhere_and_usage_errors_are_refused() {
        let a = parse(&["-n", "db", "status", "main", "--context", "kind"]);
        assert_eq!(a.namespace.as_deref(), Some("db"));
        assert_eq!(a.context.as_deref(), Some("kind"));
        assert_eq!(a.verb.cluster(), "main");
        let e = PluginCli::try_parse_from(["kubectl-tandem", "promote", "main"]).unwrap_err();
        assert_eq!(e.exit_code(), crate::local::args::EXIT_USAGE);
        let e = PluginCli::try_parse_from(["kubectl-tandem", "frobnicate"]).unwrap_err();
        assert_eq!(e.exit_code(), crate::local::args::EXIT_USAGE);
    }
}
