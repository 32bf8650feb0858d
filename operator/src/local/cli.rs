//! The `tandem local` command line (DESIGN.md §6): parses the verbs, talks to
//! a running `local up` through its control API, prints results, and maps
//! outcomes to exit codes (0 done, 1 refused or failed, 2 usage).

use std::path::Path;

use clap::{Args, Subcommand};

use super::args::{DirArg, UpArgs, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use super::control::{ControlClient, ControlError, KillSignal, LocalRequest};
use super::report::print_table;
use super::state::LocalState;
use crate::api::{DataDurability, ReplicationMode, SynchronousCommit};

use super::args::spec_value;

/// `tandem local`: run and drive a cluster of local PostgreSQL processes.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    #[command(subcommand)]
    pub verb: Verb,
}

/// The verbs of `tandem local`.
#[derive(Subcommand, Debug, Clone)]
pub enum Verb {
    /// Run the cluster in the foreground until Ctrl-C or `tandem local down`.
    Up(UpArgs),
    /// Print the status table (or JSON).
    Status {
        #[command(flatten)]
        dir: DirArg,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Switch the primary over to another instance.
    Switchover {
        #[command(flatten)]
        dir: DirArg,
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
    /// Pause automation: no automatic failover, rejoin or rolling restart (requests still run).
    Pause(DirArg),
    /// Resume automation.
    Unpause(DirArg),
    /// Restart an instance, or all of them (standbys first).
    Restart {
        #[command(flatten)]
        dir: DirArg,
        /// Instance name or `all`.
        name: String,
    },
    /// Rejoin an instance as a standby of the primary (rewinding if needed).
    Rejoin {
        #[command(flatten)]
        dir: DirArg,
        /// Instance name.
        name: String,
        /// Only say whether a rewind is needed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-clone an instance from the primary with pg_basebackup.
    Reclone {
        #[command(flatten)]
        dir: DirArg,
        /// Instance name.
        name: String,
    },
    /// Make a standby primary while the primary is down or unreachable
    /// (also while paused); the old primary is fenced first.
    Promote {
        #[command(flatten)]
        dir: DirArg,
        /// Instance name.
        name: String,
        /// Promote a learner, a standby behind others, or (sync, dataDurability
        /// required) one that was not synchronous, accepting what may be lost.
        #[arg(long)]
        force: bool,
    },
    /// Change the replication durability at runtime (a DurabilityChange; answers with its outcome).
    Set {
        #[command(flatten)]
        dir: DirArg,
        /// async or sync.
        #[arg(long, value_parser = spec_value::<ReplicationMode>)]
        mode: Option<ReplicationMode>,
        /// on, remote_write, remote_apply or local.
        #[arg(long, value_parser = spec_value::<SynchronousCommit>)]
        synchronous_commit: Option<SynchronousCommit>,
        /// preferred or required.
        #[arg(long, value_parser = spec_value::<DataDurability>)]
        data_durability: Option<DataDurability>,
        /// How many standbys must confirm each commit (ANY n).
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..16))]
        sync_standbys: Option<i32>,
    },
    /// Fault injection: send a signal to an instance's postgres (or its agent).
    Kill {
        #[command(flatten)]
        dir: DirArg,
        /// Instance name.
        name: String,
        /// KILL, STOP or CONT.
        #[arg(long, value_enum, default_value = "KILL")]
        signal: KillSignal,
        /// Signal the instance's agent process instead of postgres.
        #[arg(long)]
        agent: bool,
    },
    /// Apply a changed DbCluster manifest to the running cluster (instances,
    /// parameters, replication, failover settings…), as `kubectl apply` does.
    Apply {
        #[command(flatten)]
        dir: DirArg,
        /// The DbCluster manifest (YAML), as for `tandem local up`.
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
    /// Stop the cluster started by `tandem local up`.
    Down(DirArg),
}

/// Run a `tandem local` verb; returns the exit code.
pub async fn run(args: LocalArgs) -> anyhow::Result<i32> {
    match args.verb {
        Verb::Up(up) => super::up::run(up).await,
        Verb::Status { dir, json } => Ok(status(&dir.dir, json).await),
        Verb::Switchover {
            dir,
            to,
            dry_run,
            force,
        } => Ok(request(&dir.dir, LocalRequest::Switchover { to, dry_run, force }).await),
        Verb::Pause(dir) => Ok(request(&dir.dir, LocalRequest::Pause).await),
        Verb::Unpause(dir) => Ok(request(&dir.dir, LocalRequest::Unpause).await),
        Verb::Restart { dir, name } => Ok(request(&dir.dir, LocalRequest::Restart { name }).await),
        Verb::Rejoin { dir, name, dry_run } => {
            Ok(request(&dir.dir, LocalRequest::Rejoin { name, dry_run }).await)
        }
        Verb::Reclone { dir, name } => Ok(request(&dir.dir, LocalRequest::Reclone { name }).await),
        Verb::Promote { dir, name, force } => {
            Ok(request(&dir.dir, LocalRequest::Promote { name, force }).await)
        }
        Verb::Set {
            dir,
            mode,
            synchronous_commit,
            data_durability,
            sync_standbys,
        } => {
            if mode.is_none()
                && synchronous_commit.is_none()
                && data_durability.is_none()
                && sync_standbys.is_none()
            {
                eprintln!("tandem local set: nothing to change");
                eprintln!("give at least one of --mode, --synchronous-commit, --data-durability, --sync-standbys");
                return Ok(EXIT_USAGE);
            }
            Ok(request(
                &dir.dir,
                LocalRequest::Set {
                    mode,
                    synchronous_commit,
                    data_durability,
                    sync_standbys,
                },
            )
            .await)
        }
        Verb::Kill {
            dir,
            name,
            signal,
            agent,
        } => Ok(request(
            &dir.dir,
            LocalRequest::Kill {
                name,
                signal,
                agent,
            },
        )
        .await),
        Verb::Apply { dir, file } => match super::setup::read_manifest(&file) {
            Ok((name, spec)) => Ok(request(
                &dir.dir,
                LocalRequest::Apply {
                    name,
                    spec: Box::new(spec),
                },
            )
            .await),
            Err(e) => {
                eprintln!("apply refused: {e}");
                eprintln!("  nothing was changed");
                Ok(EXIT_FAILED)
            }
        },
        Verb::Down(dir) => Ok(request(&dir.dir, LocalRequest::Down).await),
    }
}

/// A control client for the cluster running in `dir`, or the exit code and message.
fn client(dir: &Path) -> Result<ControlClient, i32> {
    match LocalState::load(dir) {
        Ok(state) => Ok(ControlClient::new(&state)),
        Err(e) => {
            eprintln!("{e}");
            Err(EXIT_FAILED)
        }
    }
}

async fn status(dir: &Path, json: bool) -> i32 {
    let c = match client(dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match c.status().await {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("cannot encode status: {e}");
                        return EXIT_FAILED;
                    }
                }
            } else {
                print_table(&report, &mut std::io::stdout());
            }
            EXIT_OK
        }
        Err(e) => report_error(dir, &e),
    }
}

async fn request(dir: &Path, req: LocalRequest) -> i32 {
    let c = match client(dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match c.request(&req).await {
        Ok(outcome) => {
            println!("{}", outcome.message);
            for line in &outcome.detail {
                println!("  {line}");
            }
            EXIT_OK
        }
        Err(e) => report_error(dir, &e),
    }
}

fn report_error(dir: &Path, e: &ControlError) -> i32 {
    match e {
        ControlError::Unreachable { .. } => {
            eprintln!(
                "no cluster is running in {} (start one with tandem local up)",
                dir.display()
            );
            eprintln!("{e}");
        }
        ControlError::Refused { message, detail } => {
            eprintln!("{message}");
            for line in detail {
                eprintln!("  {line}");
            }
        }
        other => eprintln!("{other}"),
    }
    EXIT_FAILED
}
