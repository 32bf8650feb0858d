//! The `tandem` binary: operator, agent, crdgen and the local platform.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Highly available PostgreSQL clusters on Kubernetes and on local processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Kubernetes operator (controller and HA engine).
    Operator(tandem::controller::OperatorArgs),
    /// Run the instance agent that owns PostgreSQL in a pod or local instance.
    Agent(Box<tandem::agent::AgentArgs>),
    /// Print the DbCluster CustomResourceDefinition as YAML.
    Crdgen,
    /// Run and drive a cluster of local PostgreSQL processes.
    Local(tandem::local::LocalArgs),
    /// The kubectl plugin (`kubectl tandem …` through a `kubectl-tandem` symlink).
    Kubectl(tandem::kubectl::KubectlArgs),
}

/// Invoked as `kubectl-tandem` (a symlink to this binary on PATH)?
fn as_kubectl_plugin() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .is_some_and(|f| f == "kubectl-tandem")
}

fn main() -> anyhow::Result<()> {
    let cli = if as_kubectl_plugin() {
        Cli {
            command: Command::Kubectl(tandem::kubectl::PluginCli::parse().args),
        }
    } else {
        Cli::parse()
    };
    // kube and reqwest enable different rustls providers; pick one for the process.
    tandem::controller::install_crypto_provider();
    if let Command::Crdgen = cli.command {
        print!("{}", tandem::crdgen::crd_yaml()?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Operator(args) => runtime.block_on(tandem::controller::run(args)),
        Command::Agent(args) => runtime.block_on(tandem::agent::run(*args)),
        Command::Local(args) => {
            let code = runtime.block_on(tandem::local::run(args))?;
            std::process::exit(code)
        }
        Command::Kubectl(args) => {
            let code = runtime.block_on(tandem::kubectl::run(args));
            std::process::exit(code)
        }
        Command::Crdgen => Ok(()),
    }
}
