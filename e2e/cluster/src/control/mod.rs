//! The control plane: certificates, etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kube-proxy, the PV provisioner, the
//! pods' bridge, and `up` / `down` (docs/test-cluster.md). `up` starts them in
//! order, each after the previous answers, then the node stand-ins; any
//! failure (or Ctrl-C) on the way runs `down`, so nothing is left running.

pub mod cluster_api;
pub mod components;
pub mod kubeconfig;
pub mod network;
pub mod pki;
pub mod procs;
pub mod provisioner;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::{ClusterConfig, NODES};
use components::{Component, EtcdPorts};

/// Arguments of `up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The cluster's directory (created).
    #[arg(long, env = "KUBE_DIR")]
    pub dir: PathBuf,
    /// Directory of etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubectl.
    #[arg(long, env = "KUBE_BIN")]
    pub kube_bin: PathBuf,
    /// The `tandem` binary (the operator and postgres images map to it).
    #[arg(long, env = "TANDEM_BIN")]
    pub tandem_bin: PathBuf,
    /// PostgreSQL's bin directory (default: the newest /usr/lib/postgresql/<major>/bin).
    #[arg(long, env = "PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Start the control plane only, no node stand-ins (for working on the control plane itself).
    #[arg(long, env = "TANDEM_TESTCLUSTER_NO_NODES", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_nodes: bool,
}

/// The upstream programs `make kube` builds.
const KUBE_TOOLS: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubectl",
];
/// The control plane's processes, in the order `down` stops them.
const CONTROL_PLANE: [&str; 6] = [
    "provisioner",
    "kube-proxy",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
];
/// What `up` makes in DIR (besides the node stand-ins' `nodes/`), removed by `down`.
const MADE: [&str; 7] = [
    "cluster.json",
    "kubeconfig",
    "pki",
    "etcd",
    "volumes",
    "pids",
    "ip_forward.orig",
];

/// Start everything; return once the API answers and every node is Ready.
pub fn up(args: UpArgs) -> Result<()> {
    let started = Instant::now();
    let cfg = resolve(&args)?;
    network::check_tools()?;
    network::check_free()?;
    if let Some(name) = procs::recorded(&cfg.dir)
        .into_iter()
        .find(|n| procs::read_pid(&cfg.dir, n).is_some_and(|pid| procs::alive_in(pid, &cfg.dir)))
    {
        bail!(
            "a test cluster is already running in {} ({name} is alive): make kube-down KUBE_DIR={}",
            cfg.dir.display(),
            cfg.dir.display()
        );
    }
    // Leftovers of a cluster that died without `down` (nothing of it runs, its bridge is gone).
    stop_and_remove(&cfg.dir, false)?;
    std::fs::create_dir_all(&cfg.dir).with_context(|| format!("creating {}", cfg.dir.display()))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = start(&cfg, args.no_nodes) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    });
    drop(rt);
    match result {
        Ok(()) => {
            println!(
                "test cluster up in {:.1}s: kubectl --kubeconfig {}",
                started.elapsed().as_secs_f64(),
                cfg.kubeconfig().display()
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("tandem-testcluster up failed: {e:#}\n  stopping what was started (logs kept in {})", cfg.logs().display());
            if let Err(d) = stop_and_remove(&cfg.dir, true) {
                eprintln!("  and stopping failed too: {d:#}");
            }
            Err(e)
        }
    }
}

/// The configuration `up` will write, with every path checked.
fn resolve(args: &UpArgs) -> Result<ClusterConfig> {
    let abs =
        |p: &Path| std::path::absolute(p).with_context(|| format!("resolving {}", p.display()));
    let dir = abs(&args.dir)?;
    let kube_bin = abs(&args.kube_bin)?;
    for tool in KUBE_TOOLS {
        if !kube_bin.join(tool).is_file() {
            bail!("{} missing: run make kube", kube_bin.join(tool).display());
        }
    }
    let tandem_bin = abs(&args.tandem_bin)?;
    if !tandem_bin.is_file() {
        bail!(
            "{} missing: cargo build -p tandem --bin tandem",
            tandem_bin.display()
        );
    }
    let pg_bin = match &args.pg_bin {
        Some(p) => abs(p)?,
        None => newest_pg_bin()
            .context("no PostgreSQL in /usr/lib/postgresql (make postgres, or --pg-bin)")?,
    };
    if !pg_bin.join("postgres").is_file() {
        bail!("{} has no postgres binary", pg_bin.display());
    }
    Ok(ClusterConfig {
        dir,
        kube_bin,
        tandem_bin,
        pg_bin,
        self_bin: std::env::current_exe().context("finding this program's path")?,
        nodes: NODES.iter().map(|n| n.to_string()).collect(),
        cgroup_root: cgroup2_mount()
            .context("no cgroup v2 hierarchy mounted")?
            .join("tandem-testcluster"),
        run_as: BTreeMap::from([(999, "postgres".to_string())]),
    })
}

/// `/usr/lib/postgresql/<highest major>/bin`.
fn newest_pg_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on pure v2).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// A free port on 127.0.0.1: `preferred` when it is free, else one the kernel picks.
fn free_port(preferred: u16) -> Result<u16> {
    if std::net::TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return Ok(preferred);
    }
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(l.local_addr().context("a free port")?.port())
}

fn step(t: Instant, what: &str) {
    println!("  {what} ({:.1}s)", t.elapsed().as_secs_f64());
}

async fn start_component(cfg: &ClusterConfig, c: &Component, limit: Duration) -> Result<Child> {
    let mut child = procs::spawn_detached(&cfg.dir, c.name, &c.program, &c.args)?;
    cluster_api::wait_healthy(cfg, c, &mut child, limit).await?;
    Ok(child)
}

/// Everything `up` does after its checks, in order.
async fn start(cfg: &ClusterConfig, no_nodes: bool) -> Result<()> {
    let t = Instant::now();
    println!("starting the test cluster in {}", cfg.dir.display());
    // Written first: `down` and the node stand-ins read it.
    cfg.save()?;
    for d in [cfg.logs(), cfg.pids(), cfg.volumes()] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let pki = pki::Pki::generate(&cfg.nodes)?;
    pki.write(cfg)?;
    kubeconfig::write_all(cfg, &pki)?;
    step(t, "certificates and kubeconfigs written");

    network::create_bridge(&cfg.dir)?;
    network::enable_forwarding(&cfg.dir)?;
    network::install_guard()?;
    step(t, "bridge tkube0 198.18.0.1/16 up");

    let ports = EtcdPorts {
        client: free_port(2379)?,
        peer: free_port(2380)?,
    };
    start_component(cfg, &components::etcd(cfg, ports), Duration::from_secs(30)).await?;
    step(t, &format!("etcd serving on 127.0.0.1:{}", ports.client));
    start_component(
        cfg,
        &components::apiserver(cfg, ports),
        Duration::from_secs(120),
    )
    .await?;
    step(
        t,
        &format!("kube-apiserver ready on {}", cfg.apiserver_url()),
    );

    // The controller-manager and the scheduler start together; both must answer.
    let kcm = components::controller_manager(cfg);
    let sched = components::scheduler(cfg);
    let mut kcm_child = procs::spawn_detached(&cfg.dir, kcm.name, &kcm.program, &kcm.args)?;
    let mut sched_child = procs::spawn_detached(&cfg.dir, sched.name, &sched.program, &sched.args)?;
    cluster_api::wait_healthy(cfg, &kcm, &mut kcm_child, Duration::from_secs(60)).await?;
    cluster_api::wait_healthy(cfg, &sched, &mut sched_child, Duration::from_secs(60)).await?;
    step(t, "kube-controller-manager and kube-scheduler healthy");

    // kube-proxy waits (up to 30 s) for its Node object before it programs
    // anything, so it starts now and is checked once the stand-ins have registered.
    let proxy = components::proxy(cfg);
    let mut proxy_child = procs::spawn_detached(&cfg.dir, proxy.name, &proxy.program, &proxy.args)?;
    start_component(cfg, &components::provisioner(cfg), Duration::from_secs(30)).await?;
    step(t, "provisioner serving StorageClass standard");

    let client = cluster_api::admin_client(cfg).await?;
    if no_nodes {
        println!("  no node stand-ins (--no-nodes / TANDEM_TESTCLUSTER_NO_NODES)");
    } else {
        let mut stand_ins = Vec::new();
        for node in &cfg.nodes {
            let name = components::kubelet_name(node);
            let args = components::kubelet_args(&cfg.dir, node);
            let child = procs::spawn_detached(&cfg.dir, &name, &cfg.self_bin, &args)?;
            stand_ins.push((name, child));
        }
        cluster_api::wait_nodes_ready(cfg, &client, &mut stand_ins, Duration::from_secs(120))
            .await?;
        step(t, "all nodes Ready");
    }

    cluster_api::wait_healthy(cfg, &proxy, &mut proxy_child, Duration::from_secs(60)).await?;
    cluster_api::proxy_selfcheck(&client, Duration::from_secs(45)).await?;
    step(t, "kube-proxy: a ClusterIP answers from the host");
    // kube-proxy put its FORWARD jumps (which accept established and
    // Service-marked packets) above the guard; it only checks that they exist,
    // so moving the guard back to the top keeps it first for good.
    network::install_guard()?;
    Ok(())
}

/// Stop everything `up` started in `dir` and remove what it made.
pub fn down(dir: &Path) -> Result<()> {
    let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    if !dir.exists() {
        println!("no test cluster in {} (nothing to stop)", dir.display());
        return Ok(());
    }
    stop_and_remove(&dir, false)?;
    println!("test cluster in {} stopped and removed", dir.display());
    Ok(())
}

/// `down`'s work; idempotent, and it goes on past a failing step so one
/// stuck piece does not leave the rest running. `keep_logs` for a failed `up`.
fn stop_and_remove(dir: &Path, keep_logs: bool) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let cfg = ClusterConfig::load(dir).ok();
    let mut failures: Vec<String> = Vec::new();
    let mut note = |what: &str, r: Result<()>| {
        if let Err(e) = r {
            eprintln!("  {what}: {e:#}");
            failures.push(format!("{what}: {e:#}"));
        }
    };

    // The node cgroups, the rules and the forwarding setting are the machine's,
    // not DIR's: while another directory's cluster runs (its bridge is up),
    // only what DIR recorded is stopped.
    let other = network::bridge_owner_other_than(dir);
    if let Some(other) = &other {
        eprintln!(
            "  the running test cluster is {other}'s: stopping only the processes recorded in {}",
            dir.display()
        );
    }
    let machine = other.is_none();

    // The nodes first: their pods, netns, veths and mounts, then the stand-ins.
    if let (Some(cfg), true) = (&cfg, machine) {
        note("node cleanup", node_cleanup(cfg));
    }
    let recorded = procs::recorded(dir);
    for name in recorded.iter().filter(|n| n.starts_with("kubelet-")) {
        note(name, procs::stop(dir, name, Duration::from_secs(10)));
    }
    for name in CONTROL_PLANE {
        note(name, procs::stop(dir, name, Duration::from_secs(15)));
    }
    for name in procs::recorded(dir) {
        note(&name, procs::stop(dir, &name, Duration::from_secs(10)));
    }

    if machine {
        // kube-proxy's rules only when this cluster ran one (its log is the trace).
        let ran_proxy = procs::log_file(dir, "kube-proxy").exists();
        let proxy_bin = cfg.as_ref().map(|c| c.kube_bin.join("kube-proxy"));
        if ran_proxy || dir.join("ip_forward.orig").exists() {
            note(
                "iptables",
                network::remove_rules(proxy_bin.as_deref().filter(|_| ran_proxy)),
            );
        }
        note("bridge", network::delete_bridge(dir));
        note("ip_forward", network::restore_forwarding(dir));
        if let Some(cfg) = &cfg {
            remove_cgroups(cfg);
        }
    }
    procs::reap_children();

    if !failures.is_empty() {
        bail!(
            "could not stop everything ({} problem(s)); files in {} kept",
            failures.len(),
            dir.display()
        );
    }
    remove_files(dir, keep_logs)
}

/// The node stand-ins' own cleanup: kill the node cgroups (every stand-in and
/// pod process) and remove pod network namespaces, veths and mount points.
fn node_cleanup(cfg: &ClusterConfig) -> Result<()> {
    crate::node::cleanup(cfg)
}

/// Remove the (by now empty) cgroups of the nodes and the cluster.
fn remove_cgroups(cfg: &ClusterConfig) {
    for node in &cfg.nodes {
        let _ = std::fs::remove_dir(cfg.node_cgroup(node));
    }
    let _ = std::fs::remove_dir(&cfg.cgroup_root);
}

/// Mount points at or under `dir` (from /proc/self/mountinfo), deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
}

/// Remove what `up` made in DIR, never crossing into a mount (a bind-mounted
/// host directory must not be emptied): lazily unmount leftovers first.
fn remove_files(dir: &Path, keep_logs: bool) -> Result<()> {
    for point in mounts_under(dir) {
        eprintln!("  unmounting leftover {}", point.display());
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
    if let Some(p) = mounts_under(dir).first() {
        bail!(
            "{} is still mounted: files in {} kept",
            p.display(),
            dir.display()
        );
    }
    let mut names: Vec<String> = MADE.iter().map(|s| s.to_string()).collect();
    names.push("nodes".into());
    if !keep_logs {
        names.push("logs".into());
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        names.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".kubeconfig")),
        );
    }
    for name in names {
        let path = dir.join(&name);
        let result = match std::fs::symlink_metadata(&path) {
            Err(_) => Ok(()),
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
        };
        result.with_context(|| format!("removing {}", path.display()))?;
    }
    // DIR itself when nothing else is in it.
    let _ = std::fs::remove_dir(dir);
    Ok(())
}
