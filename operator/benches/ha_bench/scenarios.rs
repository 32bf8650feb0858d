//! The bench's fault scenarios on a running local cluster under the rw
//! writer: kill -9 of the primary's postmaster, node loss (agent and
//! postmaster killed), an unreachable primary (agent and whole server
//! SIGSTOPped, with a second writer straight at its address for the write
//! window) and a switchover; and the count of acknowledged writes lost.
//! Does I/O (signals, the CLI, SQL).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tandem_testkit::bench::fmt_duration;
use tandem_testkit::{poll_until_async, signal, signal_server};
use tokio::sync::watch;

use crate::ha_support::cluster::{show, LocalCluster};
use crate::ha_support::ops::{persisted, wait_ack_after, BOOT, FAILOVER};
use crate::ha_support::writer::{lost, stored_ids, Target, Writer};

/// The scenarios, in the order a run goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    PgKill,
    NodeLoss,
    Unreachable,
    Switchover,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::PgKill,
        Scenario::NodeLoss,
        Scenario::Unreachable,
        Scenario::Switchover,
    ];

    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::PgKill => "pgkill",
            Scenario::NodeLoss => "nodeloss",
            Scenario::Unreachable => "unreachable",
            Scenario::Switchover => "switchover",
        }
    }

    /// The table row.
    pub fn what(self) -> &'static str {
        match self {
            Scenario::PgKill => "pgkill: kill -9 postmaster → first new write",
            Scenario::NodeLoss => "node loss: kill -9 agent+postmaster → first new write",
            Scenario::Unreachable => "unreachable: SIGSTOP agent+server → write on new primary",
            Scenario::Switchover => "switchover --to any: longest gap between acked writes",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// What one run of a scenario measured.
pub struct Measured {
    pub took: Duration,
    /// Unreachable runs only.
    pub window: Option<Window>,
    /// Something worth a note (a crash that turned into a failover…).
    pub note: Option<String>,
}

/// The isolated primary's write window in one unreachable run, from the
/// instant it was isolated.
pub struct Window {
    /// The last write acknowledged by the old primary, straight at its address (None: none after isolation).
    pub last_direct_ack: Option<Duration>,
    /// The first definite refusal of a direct write (connection refused or
    /// closed, an error answer): the old server is gone or read-only.
    pub refused: Option<Duration>,
    /// The engine's figure (`writeWindowMs` of the failover's history entry).
    pub engine_ms: Option<i64>,
}

/// A cluster under the rw writer, and the acknowledged writes found lost so far.
pub struct Bench {
    pub c: LocalCluster,
    pub w: Writer,
    lost: BTreeSet<i64>,
}

/// Table of the direct writes to an isolated primary.
const DIRECT_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS tandem_direct (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())";

impl Bench {
    /// Take over a healthy cluster and its writer; creates the direct writes' table.
    pub async fn new(c: LocalCluster, w: Writer) -> Self {
        let rw = c.rw();
        let made = poll_until_async(Duration::from_secs(30), Duration::from_millis(200), || {
            let rw = rw.clone();
            async move {
                let client = rw.connect().await.ok()?;
                client.batch_execute(DIRECT_TABLE).await.ok()
            }
        })
        .await;
        if made.is_none() {
            panic!("cannot create tandem_direct through rw");
        }
        Self {
            c,
            w,
            lost: BTreeSet::new(),
        }
    }

    /// Run `s` once.
    pub async fn run(&mut self, s: Scenario) -> Result<Measured, String> {
        match s {
            Scenario::PgKill => self.pgkill().await,
            Scenario::NodeLoss => self.node_loss().await,
            Scenario::Unreachable => self.unreachable().await,
            Scenario::Switchover => self.switchover().await,
        }
    }

    /// Once the cluster is healthy again: how many acknowledged writes are
    /// not on the primary that were not already counted.
    pub async fn new_losses(&mut self) -> usize {
        let st = self.c.wait_healthy(BOOT);
        let Some(primary) = st["primary"].as_str().map(str::to_string) else {
            panic!("a healthy cluster without a primary");
        };
        let target = self.c.direct(&primary);
        // Taken before the rows are read: a write acknowledged after the read began is not missing.
        let acked = self.w.snapshot();
        let stored = poll_until_async(Duration::from_secs(30), Duration::from_millis(250), || {
            let t = target.clone();
            async move { stored_ids(&t).await.ok() }
        })
        .await
        .unwrap_or_else(|| panic!("cannot read the rows of {primary}"));
        let missing = lost(&acked, &stored);
        let before = self.lost.len();
        self.lost.extend(missing);
        self.lost.len() - before
    }

    /// Healthy, writes flowing for a second: the primary.
    async fn steady(&self) -> String {
        self.c.wait_healthy(BOOT);
        wait_ack_after(&self.w, Instant::now(), FAILOVER).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        self.c.primary().unwrap_or_default()
    }

    async fn pgkill(&mut self) -> Result<Measured, String> {
        let old = self.steady().await;
        let pid = self
            .c
            .postgres_pid(&old)
            .ok_or_else(|| format!("{old} had no postmaster to kill"))?;
        let bound = in_flight_bound(&self.w);
        let t = Instant::now();
        signal(pid, Signal::SIGKILL);
        let took = first_new_ack(&self.w, t, bound).await;
        let now = self.c.wait_healthy(BOOT);
        let moved = now["primary"].as_str() != Some(old.as_str());
        eprintln!(
            "  pgkill {old}: first new write after {}{}",
            fmt_duration(took),
            if moved {
                " (failed over)"
            } else {
                " (in place)"
            }
        );
        Ok(Measured {
            took,
            window: None,
            note: moved.then(|| format!("a crash of {old} turned into a failover")),
        })
    }

    async fn node_loss(&mut self) -> Result<Measured, String> {
        let old = self.steady().await;
        let agent = self.c.agent_pid(&old);
        let pg = self.c.postgres_pid(&old);
        let bound = in_flight_bound(&self.w);
        let t = Instant::now();
        signal(agent, Signal::SIGKILL);
        if let Some(pid) = pg {
            signal(pid, Signal::SIGKILL);
        }
        let took = first_new_ack(&self.w, t, bound).await;
        let st = self.c.wait_for("a new primary", FAILOVER, |st| {
            st["primary"].as_str().is_some_and(|p| p != old)
        });
        eprintln!(
            "  node loss of {old}: first new write after {}, new primary {}",
            fmt_duration(took),
            st["primary"]
        );
        Ok(Measured {
            took,
            window: None,
            note: None,
        })
    }

    async fn unreachable(&mut self) -> Result<Measured, String> {
        let old = self.steady().await;
        let postmaster = self
            .c
            .postgres_pid(&old)
            .ok_or_else(|| format!("{old} had no postmaster to freeze"))?;
        let agent = self.c.agent_pid(&old);
        let direct = Direct::start(self.c.direct(&old));
        if !direct.acked_once(Duration::from_secs(10)).await {
            direct.stop().await;
            return Err(format!("direct writes to {old} were never acknowledged"));
        }
        let bound = in_flight_bound(&self.w);
        let t = Instant::now();
        // The whole server (postmaster and every child), then its agent.
        signal_server(postmaster, Signal::SIGSTOP);
        signal(agent, Signal::SIGSTOP);
        let took = first_new_ack(&self.w, t, bound).await;
        self.c.wait_for("a new primary", FAILOVER, |st| {
            st["primary"].as_str().is_some_and(|p| p != old)
        });
        // The platform fences an agent that stopped answering by killing it
        // and its server; the direct writer sees the refusal then.
        direct.refused_after(t, Duration::from_secs(20)).await;
        let (last_direct_ack, refused) = direct.stop().await.window(t);
        // Whatever the fencing left (it kills both): let it go on.
        signal_server(postmaster, Signal::SIGCONT);
        signal(agent, Signal::SIGCONT);
        let engine_ms = persisted(&self.c).and_then(|p| {
            p["status"]["history"]
                .as_array()?
                .iter()
                .rev()
                .find(|e| e["kind"] == "Failover")?["writeWindowMs"]
                .as_i64()
        });
        eprintln!(
            "  unreachable {old}: first write on the new primary after {}; old primary's last direct ack {}, refusing after {}, engine writeWindowMs {}",
            fmt_duration(took),
            fmt_opt(last_direct_ack),
            fmt_opt(refused),
            engine_ms.map(|m| m.to_string()).unwrap_or_else(|| "-".into())
        );
        Ok(Measured {
            took,
            window: Some(Window {
                last_direct_ack,
                refused,
                engine_ms,
            }),
            note: None,
        })
    }

    async fn switchover(&mut self) -> Result<Measured, String> {
        let old = self.steady().await;
        let t = Instant::now();
        let out = self.c.cli("switchover", &["--to", "any"]);
        if out.status.code() != Some(0) {
            return Err(format!("switchover refused: {}", show(&out)));
        }
        let done = Instant::now();
        wait_ack_after(&self.w, done, FAILOVER).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let gap = self.w.snapshot().longest_gap_after(t);
        eprintln!(
            "  switchover from {old}: longest write gap {} (command took {})",
            fmt_duration(gap),
            fmt_duration(done.duration_since(t))
        );
        Ok(Measured {
            took: gap,
            window: None,
            note: None,
        })
    }
}

fn fmt_opt(d: Option<Duration>) -> String {
    d.map(fmt_duration).unwrap_or_else(|| "none".into())
}

/// The first acknowledgement, at or after `t`, of a write issued after `t`.
async fn first_new_ack(w: &Writer, t: Instant, in_flight_below: i64) -> Duration {
    w.first_new_ack(t, in_flight_below, FAILOVER)
        .await
        .unwrap_or_else(|| panic!("no write acknowledged within {FAILOVER:?}"))
}

/// Ids up to this one may be in flight now.
fn in_flight_bound(w: &Writer) -> i64 {
    w.snapshot().in_flight_bound()
}

/// What the direct writer saw: acknowledgements and definite refusals.
#[derive(Default, Clone)]
struct DirectLog {
    acked: Vec<Instant>,
    refused: Vec<Instant>,
}

impl DirectLog {
    /// (last ack at or after `t`, first refusal at or after `t`), from `t`.
    fn window(&self, t: Instant) -> (Option<Duration>, Option<Duration>) {
        let last = self
            .acked
            .iter()
            .filter(|a| **a >= t)
            .max()
            .map(|a| a.duration_since(t));
        let refused = self
            .refused
            .iter()
            .filter(|a| **a >= t)
            .min()
            .map(|a| a.duration_since(t));
        (last, refused)
    }
}

/// A writer straight at one instance's address, one INSERT every 20 ms,
/// each attempt bounded by a second (a frozen server answers nothing).
struct Direct {
    log: Arc<Mutex<DirectLog>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// How long one direct attempt may take.
const DIRECT_ATTEMPT: Duration = Duration::from_secs(1);

impl Direct {
    fn start(target: Target) -> Self {
        let log = Arc::new(Mutex::new(DirectLog::default()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(direct_loop(target, log.clone(), stopped));
        Self { log, stop, task }
    }

    fn snapshot(&self) -> DirectLog {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    async fn acked_once(&self, timeout: Duration) -> bool {
        poll_until_async(timeout, Duration::from_millis(20), || {
            let acked = !self.snapshot().acked.is_empty();
            async move { acked.then_some(()) }
        })
        .await
        .is_some()
    }

    async fn refused_after(&self, t: Instant, timeout: Duration) {
        poll_until_async(timeout, Duration::from_millis(20), || {
            let r = self.snapshot().window(t).1;
            async move { r }
        })
        .await;
    }

    async fn stop(self) -> DirectLog {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Whether an error is a definite answer (refused, closed, an error from
/// the server) rather than silence.
fn definite(e: &tokio_postgres::Error) -> bool {
    if e.as_db_error().is_some() || e.is_closed() {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

async fn direct_loop(target: Target, log: Arc<Mutex<DirectLog>>, stopped: watch::Receiver<bool>) {
    let mut client: Option<tokio_postgres::Client> = None;
    let record = |ok: bool| {
        if let Ok(mut l) = log.lock() {
            if ok {
                l.acked.push(Instant::now());
            } else {
                l.refused.push(Instant::now());
            }
        }
    };
    while !*stopped.borrow() {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio::time::timeout(DIRECT_ATTEMPT, target.connect()).await {
                Ok(Ok(c)) => Some(c),
                Ok(Err(e)) => {
                    if definite(&e) {
                        record(false);
                    }
                    None
                }
                Err(_) => None,
            };
        }
        if let Some(c) = client.as_ref() {
            let res = tokio::time::timeout(
                DIRECT_ATTEMPT,
                c.execute("INSERT INTO tandem_direct DEFAULT VALUES", &[]),
            )
            .await;
            match res {
                Ok(Ok(_)) => record(true),
                Ok(Err(e)) => {
                    if definite(&e) {
                        record(false);
                    }
                    client = None;
                }
                Err(_) => client = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
