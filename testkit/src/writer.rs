//! A writer that commits numbered rows through an endpoint every few
//! milliseconds and records which commits were acknowledged, and the check
//! that every acknowledged row survived. Used by the HA tests and `make bench`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::NoTls;

/// Where to write.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

impl Target {
    fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.dbname)
            .connect_timeout(Duration::from_secs(1));
        c
    }

    /// Connect once.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.config().connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Connect once from the local address `source` (a client of its own,
    /// that packet-filter rules can tell apart); `host` must be an IPv4 address.
    pub async fn connect_from(
        &self,
        source: Ipv4Addr,
    ) -> Result<tokio_postgres::Client, ConnectError> {
        let ip: Ipv4Addr = self
            .host
            .parse()
            .map_err(|_| ConnectError::NotAnAddress(self.host.clone()))?;
        let to = SocketAddr::from((ip, self.port));
        let stream = crate::partition::connect_from(source, to, Duration::from_secs(1))
            .await
            .map_err(ConnectError::Tcp)?;
        let (client, conn) = self
            .config()
            .connect_raw(stream, NoTls)
            .await
            .map_err(ConnectError::Postgres)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Connect from `source` when given, else as the kernel chooses.
    async fn connect_maybe_from(
        &self,
        source: Option<Ipv4Addr>,
    ) -> Result<tokio_postgres::Client, ConnectError> {
        match source {
            Some(s) => self.connect_from(s).await,
            None => self.connect().await.map_err(ConnectError::Postgres),
        }
    }
}

/// A connection from a chosen address failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0} is not an IPv4 address (a bound connection needs one)")]
    NotAnAddress(String),
    #[error("TCP connection failed: {0}")]
    Tcp(std::io::Error),
    #[error("{0}")]
    Postgres(tokio_postgres::Error),
}

/// What the writer saw.
#[derive(Default, Debug, Clone)]
pub struct WriteLog {
    /// Acknowledged ids with the instant of the acknowledgement.
    pub acked: Vec<(i64, Instant)>,
    /// Ids whose commit failed or whose outcome is unknown.
    pub failed: Vec<i64>,
}

impl WriteLog {
    /// Ids acknowledged.
    pub fn acked_ids(&self) -> BTreeSet<i64> {
        self.acked.iter().map(|(id, _)| *id).collect()
    }

    /// Longest gap between consecutive acknowledgements at or after `from`.
    pub fn longest_gap_after(&self, from: Instant) -> Duration {
        let mut last = None::<Instant>;
        let mut gap = Duration::ZERO;
        for (_, at) in &self.acked {
            if *at < from {
                last = Some(*at);
                continue;
            }
            if let Some(l) = last {
                gap = gap.max(at.duration_since(l));
            }
            last = Some(*at);
        }
        gap
    }

    /// First acknowledgement at or after `t`.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.acked.iter().map(|(_, at)| *at).find(|at| *at >= t)
    }

    /// Ids up to this one may be in flight now: a write issued later has a higher id.
    pub fn in_flight_bound(&self) -> i64 {
        let acked = self.acked.iter().map(|(id, _)| *id).max().unwrap_or(0);
        let failed = self.failed.iter().copied().max().unwrap_or(0);
        acked.max(failed) + 1
    }

    /// How long after `t` the first write with an id above `in_flight_below`
    /// was acknowledged (a write in flight at `t` may be acknowledged a moment
    /// later: it does not count).
    pub fn first_new_ack(&self, t: Instant, in_flight_below: i64) -> Option<Duration> {
        self.acked
            .iter()
            .find(|(id, at)| *at >= t && *id > in_flight_below)
            .map(|(_, at)| at.duration_since(t))
    }
}

/// How long one connection attempt of the writer may take, start-up included.
const CONNECT: Duration = Duration::from_millis(500);

/// A running writer.
pub struct Writer {
    log: Arc<Mutex<WriteLog>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Create the table the writer writes to (idempotent).
pub async fn prepare(target: &Target) -> Result<(), tokio_postgres::Error> {
    let c = target.connect().await?;
    c.batch_execute("CREATE TABLE IF NOT EXISTS tandem_writes (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
        .await
}

impl Writer {
    /// Start writing numbered rows (starting after `start_after`) every `interval`.
    pub fn start(target: Target, start_after: i64, interval: Duration) -> Self {
        Self::start_from(target, None, start_after, interval)
    }

    /// As [`Writer::start`], connecting from the local address `source` when given.
    pub fn start_from(
        target: Target,
        source: Option<Ipv4Addr>,
        start_after: i64,
        interval: Duration,
    ) -> Self {
        Self::spawn(target, source, start_after, interval, false)
    }

    /// As [`Writer::start`], but each write on a new connection (a client
    /// without a pool): its gaps are those a new connection sees.
    pub fn start_connecting_each_time(
        target: Target,
        start_after: i64,
        interval: Duration,
    ) -> Self {
        Self::spawn(target, None, start_after, interval, true)
    }

    fn spawn(
        target: Target,
        source: Option<Ipv4Addr>,
        start_after: i64,
        interval: Duration,
        connect_each_time: bool,
    ) -> Self {
        let log = Arc::new(Mutex::new(WriteLog::default()));
        let (stop, mut stopped) = watch::channel(false);
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            let mut next = start_after + 1;
            let mut client: Option<tokio_postgres::Client> = None;
            while !*stopped.borrow() {
                if client.as_ref().map(|c| c.is_closed()).unwrap_or(true) {
                    // Bounded as a whole: a frozen server completes the TCP
                    // handshake (the kernel does) and then never answers.
                    client = tokio::select! {
                        c = tokio::time::timeout(CONNECT, target.connect_maybe_from(source)) => c.ok().and_then(Result::ok),
                        _ = stopped.changed() => break,
                    };
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                }
                let Some(c) = client.as_ref() else { continue };
                let id = next;
                next += 1;
                let res = tokio::time::timeout(
                    Duration::from_secs(5),
                    c.execute("INSERT INTO tandem_writes (id) VALUES ($1)", &[&id]),
                )
                .await;
                match res {
                    Ok(Ok(_)) => {
                        if let Ok(mut l) = task_log.lock() {
                            l.acked.push((id, Instant::now()));
                        }
                    }
                    _ => {
                        if let Ok(mut l) = task_log.lock() {
                            l.failed.push(id);
                        }
                        client = None;
                    }
                }
                if connect_each_time {
                    client = None;
                }
                tokio::time::sleep(interval).await;
            }
        });
        Self { log, stop, task }
    }

    /// Wait (at most `timeout`) for [`WriteLog::first_new_ack`].
    pub async fn first_new_ack(
        &self,
        t: Instant,
        in_flight_below: i64,
        timeout: Duration,
    ) -> Option<Duration> {
        crate::poll_until_async(timeout, Duration::from_millis(5), || {
            let at = self.snapshot().first_new_ack(t, in_flight_below);
            async move { at }
        })
        .await
    }

    /// A copy of what was seen so far.
    pub fn snapshot(&self) -> WriteLog {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Stop and return the log.
    pub async fn stop(self) -> WriteLog {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Ids present in the table at `target`.
pub async fn stored_ids(target: &Target) -> Result<BTreeSet<i64>, tokio_postgres::Error> {
    let c = target.connect().await?;
    let rows = c.query("SELECT id FROM tandem_writes", &[]).await?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}

/// Acknowledged ids missing from `stored`.
pub fn lost(log: &WriteLog, stored: &BTreeSet<i64>) -> Vec<i64> {
    missing(log.acked_ids(), stored)
}

/// The acknowledged ids that are not among the rows read back, in the order
/// acknowledged, each once: the check every suite makes after a failover,
/// whatever wrote the rows (this writer, or the e2e suite's psql pod).
pub fn missing(acked: impl IntoIterator<Item = i64>, stored: &BTreeSet<i64>) -> Vec<i64> {
    let mut seen = BTreeSet::new();
    acked
        .into_iter()
        .filter(|id| !stored.contains(id) && seen.insert(*id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_lists_each_acknowledged_id_not_read_back_once_in_order() {
        let stored = BTreeSet::from([1, 2, 4, 99]);
        assert_eq!(missing([5, 1, 3, 3, 2, 4], &stored), vec![5, 3]);
        assert!(missing([1, 2], &stored).is_empty());
        assert!(missing([], &stored).is_empty());
    }

    #[test]
    fn lost_is_missing_of_the_logs_acknowledgements() {
        let now = Instant::now();
        let log = WriteLog {
            acked: vec![(1, now), (2, now), (3, now)],
            failed: vec![4],
        };
        // A failed write that did land is not a loss, nor is one that did not.
        assert_eq!(lost(&log, &BTreeSet::from([1, 3, 4])), vec![2]);
    }
}
