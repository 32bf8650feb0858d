//! `tandem-testcluster`: the test cluster of DESIGN.md §8. Upstream etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler and kube-proxy run
//! as local processes; a node stand-in per node does what a kubelet does with
//! local processes in network namespaces instead of containers.
//!
//! ```text
//! tandem-testcluster up   --dir DIR [--kube-bin D] [--tandem-bin F] [--pg-bin D]
//! tandem-testcluster down --dir DIR
//! tandem-testcluster node --dir DIR --node node-2 --action freeze|thaw|kill|start
//! tandem-testcluster kubelet --dir DIR --node node-1     # the node stand-in (started by up)
//! tandem-testcluster provisioner --dir DIR               # the PV provisioner (started by up)
//! ```

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

mod config;
mod control;
mod node;

/// The test cluster: a real control plane, pods as local processes.
#[derive(Debug, Parser)]
#[command(name = "tandem-testcluster", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the control plane and three nodes; returns once the nodes are Ready.
    Up(control::UpArgs),
    /// Stop every process `up` started and remove what it made.
    Down {
        /// The cluster's directory.
        #[arg(long, env = "KUBE_DIR")]
        dir: PathBuf,
    },
    /// Fault injection on one node.
    Node {
        /// The cluster's directory.
        #[arg(long, env = "KUBE_DIR")]
        dir: PathBuf,
        /// The node (node-1, node-2, node-3).
        #[arg(long)]
        node: String,
        /// What to do to it.
        #[arg(long, value_enum)]
        action: NodeAction,
    },
    /// Run the PV provisioner in the foreground (`up` starts it): StorageClass
    /// `standard`, a directory-backed PV per claim, Released PVs deleted.
    Provisioner {
        /// The cluster's directory.
        #[arg(long, env = "KUBE_DIR")]
        dir: PathBuf,
    },
    /// Run the node stand-in of one node in the foreground (`up` starts these).
    Kubelet {
        /// The cluster's directory.
        #[arg(long, env = "KUBE_DIR")]
        dir: PathBuf,
        /// The node this stand-in is.
        #[arg(long)]
        node: String,
    },
}

/// Fault injection verbs of DESIGN.md §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NodeAction {
    /// Heartbeats stop and every process of the node's pods is stopped (SIGSTOP-like, cgroup freezer).
    Freeze,
    /// Undo freeze.
    Thaw,
    /// The node's processes die and heartbeats stop (power loss).
    Kill,
    /// Start a killed node's stand-in again; it restarts the pods bound to it.
    Start,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Up(args) => control::up(args),
        Command::Down { dir } => control::down(&dir),
        Command::Node { dir, node, action } => node::action(&dir, &node, action),
        Command::Provisioner { dir } => control::provisioner::main(&dir),
        Command::Kubelet { dir, node } => node::run_kubelet(&dir, &node),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-testcluster: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
