//! `make bench`: the HA timings of issue 10 on 3-instance `tandem local`
//! clusters under a writer committing one INSERT every 20 ms through rw —
//! postgres crash (pgkill), node loss, unreachable primary and switchover,
//! each with async replication and with sync + dataDurability required at
//! default failover settings, and the unreachable primary again under tuned
//! settings (detectionTimeout 1s, leaseTtl 2s) — with the acknowledged
//! writes lost in each run, the isolated primary's write window, and the
//! memory of the agents and of `local up`, printed as one table.
//! Does I/O (processes, signals, SQL).

#[path = "../../tests/ha_support/mod.rs"]
mod ha_support;
mod scenarios;

use std::time::{Duration, Instant};

use ha_support::cluster::LocalCluster;
use ha_support::ops::healthy_with_writer_every;
use scenarios::{Bench, Scenario};
use tandem_testkit::bench::{self as table, fmt_kib, load, memory_kib, Series};

/// The writer: one INSERT through rw every 20 ms.
const WRITE_EVERY: Duration = Duration::from_millis(20);

/// Replication of a setup.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Async,
    Sync,
}

/// One cluster the bench starts: replication mode, failover settings.
#[derive(Clone, Copy)]
struct Setup {
    mode: Mode,
    tuned: bool,
}

impl Setup {
    fn label(self) -> String {
        let m = match self.mode {
            Mode::Async => "async",
            Mode::Sync => "sync+req",
        };
        if self.tuned {
            format!("{m} tuned")
        } else {
            m.to_string()
        }
    }

    /// (detectionTimeout, leaseTtl) in force.
    fn timing(self) -> (Duration, Duration) {
        if self.tuned {
            (Duration::from_secs(1), Duration::from_secs(2))
        } else {
            (Duration::from_secs(5), Duration::from_secs(10))
        }
    }

    fn spec(self) -> String {
        let mut s = String::from("  instances: 3");
        if self.tuned {
            s.push_str("\n  failover: {detectionTimeout: 1s, leaseTtl: 2s}");
        }
        if self.mode == Mode::Sync {
            s.push_str("\n  replication: {mode: sync, dataDurability: required}");
        }
        s
    }

    /// The goal for `s`'s median.
    fn goal(self, s: Scenario) -> Option<Duration> {
        let (detection, ttl) = self.timing();
        Some(match s {
            Scenario::PgKill => Duration::from_millis(500),
            Scenario::NodeLoss => Duration::from_millis(350),
            Scenario::Unreachable => detection.max(ttl) + Duration::from_millis(500),
            Scenario::Switchover => Duration::from_millis(300),
        })
    }
}

/// The command line: `--runs N`, `--quick` (one run), `--only a,b`, `--modes async,sync`, `--no-tuned`.
struct Args {
    runs: usize,
    only: Vec<Scenario>,
    modes: Vec<Mode>,
    tuned: bool,
}

fn usage(why: &str) -> ! {
    eprintln!("{why}\nusage: ha_bench [--runs N] [--quick] [--only pgkill,nodeloss,unreachable,switchover] [--modes async,sync] [--no-tuned]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        runs: 5,
        only: Scenario::ALL.to_vec(),
        modes: vec![Mode::Async, Mode::Sync],
        tuned: true,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--runs" => a.runs = value().parse().unwrap_or_else(|_| usage("--runs N")),
            "--quick" => a.runs = 1,
            "--only" => {
                a.only = value()
                    .split(',')
                    .map(|s| {
                        Scenario::parse(s).unwrap_or_else(|| usage(&format!("no scenario {s}")))
                    })
                    .collect()
            }
            "--modes" => {
                a.modes = value()
                    .split(',')
                    .map(|m| match m {
                        "async" => Mode::Async,
                        "sync" => Mode::Sync,
                        _ => usage(&format!("no mode {m}")),
                    })
                    .collect()
            }
            "--no-tuned" => a.tuned = false,
            // `cargo bench` passes --bench.
            "--bench" => {}
            other => usage(&format!("unknown argument {other}")),
        }
    }
    a
}

/// Everything measured on one setup.
struct Measured {
    series: Vec<Series>,
    memory: Vec<String>,
    notes: Vec<String>,
}

/// The setups of this invocation: default settings for every scenario, then
/// the tuned settings for the unreachable primary.
fn setups(a: &Args) -> Vec<(Setup, Vec<Scenario>)> {
    let mut out = Vec::new();
    for &mode in &a.modes {
        out.push((Setup { mode, tuned: false }, a.only.clone()));
    }
    if a.tuned && a.only.contains(&Scenario::Unreachable) {
        for &mode in &a.modes {
            out.push((Setup { mode, tuned: true }, vec![Scenario::Unreachable]));
        }
    }
    out
}

async fn measure(setup: Setup, scenarios: &[Scenario], runs: usize) -> Measured {
    let label = setup.label();
    eprintln!(
        "== {label}: starting a 3-instance cluster (load {})",
        load()
    );
    let name = format!("bench-{}", label.replace([' ', '+'], "-"));
    let c = LocalCluster::start_with_log(&name, &setup.spec(), "info,hyper=warn,reqwest=warn");
    let w = healthy_with_writer_every(&c, WRITE_EVERY).await;
    let mut b = Bench::new(c, w).await;
    let mut series: Vec<Series> = scenarios
        .iter()
        .map(|s| Series::new(s.what(), &label, setup.goal(*s), true))
        .collect();
    let mut windows = [
        "  write window: last direct ack on the isolated primary",
        "  isolated primary refuses direct writes after",
        "  engine's writeWindowMs (failover history)",
    ]
    .map(|w| Series::new(w, &label, None, false));
    let mut notes = Vec::new();
    for r in 1..=runs {
        eprintln!("{label}: run {r}/{runs} (load {})", load());
        for (i, s) in scenarios.iter().enumerate() {
            match b.run(*s).await {
                Ok(m) => {
                    series[i].samples.push(m.took);
                    if let Some(n) = m.note {
                        notes.push(format!("{label} {}: {n}", s.name()));
                    }
                    if let Some(win) = m.window {
                        windows[0]
                            .samples
                            .push(win.last_direct_ack.unwrap_or(Duration::ZERO));
                        if let Some(r) = win.refused {
                            windows[1].samples.push(r);
                        }
                        if let Some(ms) = win.engine_ms {
                            windows[2]
                                .samples
                                .push(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
                        }
                    }
                }
                Err(why) => notes.push(format!("{label} {}: run {r}: {why}", s.name())),
            }
            let lost = b.new_losses().await;
            if let Some(l) = series[i].lost.as_mut() {
                l.push(lost);
            }
            if lost > 0 && setup.mode == Mode::Sync {
                notes.push(format!(
                    "VIOLATION: {label} {} run {r} lost {lost} acknowledged writes under sync+required",
                    s.name()
                ));
            }
        }
    }
    let memory = memory_of(&b.c, &label);
    let log = b.w.stop().await;
    eprintln!(
        "{label}: {} writes acknowledged, {} failed or unknown",
        log.acked.len(),
        log.failed.len()
    );
    if scenarios.contains(&Scenario::Unreachable) {
        series.extend(windows);
    }
    Measured {
        series,
        memory,
        notes,
    }
}

/// RSS (and peak) of each agent and of `local up`, from /proc.
fn memory_of(c: &LocalCluster, label: &str) -> Vec<String> {
    let st = c.state();
    let mut out = Vec::new();
    let show = |what: &str, pid: i32| match memory_kib(pid) {
        Some((rss, hwm)) => format!(
            "{label:<15} {what:<28} RSS {:>10}  (peak {})",
            fmt_kib(rss),
            fmt_kib(hwm)
        ),
        None => format!("{label:<15} {what:<28} not running"),
    };
    let up = st["pid"].as_i64().unwrap_or(0) as i32;
    out.push(show("operator (tandem local up)", up));
    for i in st["instances"].as_array().cloned().unwrap_or_default() {
        let name = i["name"].as_str().unwrap_or("?");
        let pid = i["agentPid"].as_i64().unwrap_or(0) as i32;
        out.push(show(&format!("agent {name}"), pid));
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let started = Instant::now();
    let load_before = load();
    let mut all = Vec::new();
    for (setup, scenarios) in setups(&args) {
        all.push(measure(setup, &scenarios, args.runs).await);
    }
    let series: Vec<Series> = all.iter_mut().flat_map(|m| m.series.drain(..)).collect();
    println!();
    println!(
        "tandem HA bench: 3 instances on tandem local; writer: one INSERT every {} ms through rw; {} run(s) each",
        WRITE_EVERY.as_millis(),
        args.runs
    );
    println!("defaults: detectionTimeout 5s, leaseTtl 10s; tuned: detectionTimeout 1s, leaseTtl 2s; sync+req: mode sync, dataDurability required");
    println!(
        "load average (1/5/15 min): {load_before} at the start, {} at the end; total {:.0} s",
        load(),
        started.elapsed().as_secs_f64()
    );
    println!();
    print!("{}", table::render(&series));
    println!();
    for m in &all {
        for line in &m.memory {
            println!("{line}");
        }
    }
    let notes: Vec<&String> = all.iter().flat_map(|m| m.notes.iter()).collect();
    if !notes.is_empty() {
        println!();
    }
    for n in notes {
        println!("note: {n}");
    }
    println!();
    println!("rerun: make bench BENCH_RUNS={}", args.runs);
}
