//! `make bench`: HA timings on a 3-instance `tandem local` cluster with
//! default settings, under a writer committing through rw every 5 ms:
//! node-loss failover, postgres-crash recovery and the switchover write gap,
//! several runs each, printed as min / median / max. Does I/O (processes, SQL).

#[path = "../tests/ha_support/mod.rs"]
mod ha_support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tandem_testkit::{poll_until_async, signal};

use ha_support::cluster::{show, LocalCluster};
use ha_support::ops::{healthy_with_writer, wait_ack_after, BOOT, FAILOVER, WRITE_EVERY};
use ha_support::writer::Writer;

const SPEC: &str = "  instances: 3";

struct Series {
    what: &'static str,
    samples: Vec<Duration>,
    notes: Vec<String>,
}

impl Series {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            samples: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn row(&self) -> String {
        let mut s = self.samples.clone();
        s.sort();
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        if s.is_empty() {
            return format!(
                "{:<46} {:>4}  {:>9} {:>9} {:>9}",
                self.what, 0, "-", "-", "-"
            );
        }
        let median = if s.len() % 2 == 1 {
            s[s.len() / 2]
        } else {
            (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2
        };
        format!(
            "{:<46} {:>4}  {:>9} {:>9} {:>9}",
            self.what,
            s.len(),
            ms(s[0]),
            ms(median),
            ms(s[s.len() - 1])
        )
    }
}

/// The first acknowledgement, at or after `t`, of a write issued after `t`
/// (a write in flight at `t` may be acknowledged a moment later: it does not count).
async fn first_new_ack(w: &Writer, t: Instant, in_flight_below: i64) -> Duration {
    let acked = poll_until_async(FAILOVER, Duration::from_millis(5), || {
        let log = w.snapshot();
        let at = log
            .acked
            .iter()
            .find(|(id, at)| *at >= t && *id > in_flight_below)
            .map(|(_, at)| at.duration_since(t));
        async move { at }
    })
    .await;
    acked.unwrap_or_else(|| panic!("no write acknowledged within {FAILOVER:?}"))
}

/// Ids up to this one may be in flight now.
fn in_flight_bound(w: &Writer) -> i64 {
    let log = w.snapshot();
    let acked = log.acked.iter().map(|(id, _)| *id).max().unwrap_or(0);
    let failed = log.failed.iter().copied().max().unwrap_or(0);
    acked.max(failed) + 1
}

/// Let the writer run steadily for a moment so the measurement starts from a busy cluster.
async fn steady(c: &LocalCluster, w: &Writer) -> String {
    c.wait_healthy(BOOT);
    let t = Instant::now();
    wait_ack_after(w, t, FAILOVER).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.primary().unwrap_or_default()
}

async fn node_loss(c: &LocalCluster, w: &Writer, s: &mut Series) {
    let old = steady(c, w).await;
    let agent = c.agent_pid(&old);
    let pg = c.postgres_pid(&old);
    let bound = in_flight_bound(w);
    let t = Instant::now();
    signal(agent, Signal::SIGKILL);
    if let Some(pid) = pg {
        signal(pid, Signal::SIGKILL);
    }
    let took = first_new_ack(w, t, bound).await;
    s.samples.push(took);
    let st = c.wait_for("a new primary", FAILOVER, |st| {
        st["primary"].as_str().is_some_and(|p| p != old)
    });
    eprintln!(
        "  node loss of {old}: first write after {took:?}, new primary {}",
        st["primary"]
    );
}

async fn crash(c: &LocalCluster, w: &Writer, s: &mut Series) {
    let old = steady(c, w).await;
    let Some(pid) = c.postgres_pid(&old) else {
        s.notes.push(format!("{old} had no postmaster to kill"));
        return;
    };
    let bound = in_flight_bound(w);
    let t = Instant::now();
    signal(pid, Signal::SIGKILL);
    let took = first_new_ack(w, t, bound).await;
    s.samples.push(took);
    let now = c.wait_healthy(BOOT);
    let moved = now["primary"].as_str() != Some(old.as_str());
    if moved {
        s.notes
            .push(format!("a crash of {old} turned into a failover"));
    }
    eprintln!(
        "  postgres crash on {old}: first write after {took:?}{}",
        if moved {
            " (failed over)"
        } else {
            " (in place)"
        }
    );
}

async fn switchover(c: &LocalCluster, w: &Writer, s: &mut Series) {
    let old = steady(c, w).await;
    let t = Instant::now();
    let out = c.cli("switchover", &["--to", "any"]);
    if out.status.code() != Some(0) {
        s.notes.push(format!("switchover refused: {}", show(&out)));
        return;
    }
    let done = Instant::now();
    wait_ack_after(w, done, FAILOVER).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = w.snapshot();
    let gap = log.longest_gap_after(t);
    s.samples.push(gap);
    eprintln!(
        "  switchover from {old}: longest write gap {gap:?} (command took {:?})",
        done.duration_since(t)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; accept and ignore it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 5usize;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--runs" => {
                runs = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| {
                        eprintln!("--runs needs a number");
                        std::process::exit(2)
                    });
                i += 1;
            }
            "--bench" => {}
            other => {
                eprintln!("unknown argument {other} (usage: ha_bench [--runs N])");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    let started = Instant::now();
    eprintln!(
        "starting a 3-instance cluster (defaults) with a writer every {WRITE_EVERY:?} through rw"
    );
    let c = LocalCluster::start_with_log("bench", SPEC, "info,hyper=warn,reqwest=warn");
    let w = healthy_with_writer(&c).await;
    let mut fo = Series::new("node-loss failover (kill -9 agent + postgres)");
    let mut cr = Series::new("postgres crash recovery (kill -9 postmaster)");
    let mut sw = Series::new("switchover write gap (--to any)");
    for r in 1..=runs {
        eprintln!("run {r}/{runs}");
        node_loss(&c, &w, &mut fo).await;
        crash(&c, &w, &mut cr).await;
        switchover(&c, &w, &mut sw).await;
    }
    let log = w.stop().await;
    let settings = c
        .status()
        .map(|s| format!("mode {}", s["mode"]))
        .unwrap_or_default();
    println!();
    println!("tandem HA bench: 3 instances, default settings (detectionTimeout 5s, delay 0s, leaseTtl 10s, {settings}),");
    println!("writer: one INSERT per {WRITE_EVERY:?} through the rw endpoint; times are until the first acknowledged write");
    println!(
        "({} writes acknowledged in all; total bench time {:.0} s)",
        log.acked.len(),
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "{:<46} {:>4}  {:>9} {:>9} {:>9}",
        "measurement", "runs", "min", "median", "max"
    );
    for s in [&fo, &cr, &sw] {
        println!("{}", s.row());
    }
    for s in [&fo, &cr, &sw] {
        for n in &s.notes {
            println!("note ({}): {n}", s.what);
        }
    }
    println!();
    println!("rerun: make bench   (= cargo bench -p tandem --bench ha_bench -- --runs {runs})");
}
