//! The benches' figures and the table they print (`make bench`: the local
//! HA bench and the one on the test cluster): a series of samples per
//! (measurement, cluster setup) with min / median / max, its goal, the lost
//! acknowledged writes of each run; memory figures read from /proc; the
//! machine's load. Pure but for reading /proc.

use std::fmt::Write as _;
use std::time::Duration;

/// One measurement on one cluster setup, over the runs.
pub struct Series {
    /// What is measured (a table row's first column).
    pub what: String,
    /// The cluster setup ("async", "sync+req", …).
    pub setup: String,
    pub samples: Vec<Duration>,
    /// Acknowledged writes lost in each run; `None` for a figure that loses nothing itself.
    pub lost: Option<Vec<usize>>,
    /// The goal for the median, if it sets one.
    pub goal: Option<Duration>,
}

impl Series {
    pub fn new(what: &str, setup: &str, goal: Option<Duration>, counts_losses: bool) -> Self {
        Self {
            what: what.to_string(),
            setup: setup.to_string(),
            samples: Vec::new(),
            lost: counts_losses.then(Vec::new),
            goal,
        }
    }

    /// (min, median, max) of the samples.
    pub fn stats(&self) -> Option<(Duration, Duration, Duration)> {
        let mut s = self.samples.clone();
        s.sort();
        let (first, last) = (*s.first()?, *s.last()?);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2
        };
        Some((first, median, last))
    }

    /// Whether the median meets the goal (None without a goal or samples).
    pub fn meets_goal(&self) -> Option<bool> {
        let (_, median, _) = self.stats()?;
        Some(median <= self.goal?)
    }
}

/// "180 ms" or "6.42 s".
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

const WHAT: usize = 58;

/// The table: one row per series, in the order given.
pub fn render(series: &[Series]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<WHAT$} {:<15} {:>4} {:>9} {:>9} {:>9} {:>10}  lost acked writes per run",
        "measurement", "setup", "runs", "min", "median", "max", "goal"
    );
    let _ = writeln!(out, "{}", "-".repeat(WHAT + 15 + 4 + 9 * 3 + 10 + 34));
    for s in series {
        let (min, median, max) = match s.stats() {
            Some((a, b, c)) => (fmt_duration(a), fmt_duration(b), fmt_duration(c)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let goal = match (s.goal, s.meets_goal()) {
            (Some(g), Some(true)) => format!("≤{} ok", fmt_duration(g)),
            (Some(g), Some(false)) => format!("≤{} NO", fmt_duration(g)),
            (Some(g), None) => format!("≤{}", fmt_duration(g)),
            (None, _) => "-".into(),
        };
        let lost = match &s.lost {
            Some(l) if l.is_empty() => "-".to_string(),
            Some(l) => l
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<WHAT$} {:<15} {:>4} {:>9} {:>9} {:>9} {:>10}  {lost}",
            s.what,
            s.setup,
            s.samples.len(),
            min,
            median,
            max,
            goal
        );
    }
    out
}

/// VmRSS and VmHWM of a process, in KiB.
pub fn memory_kib(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// "12.3 MiB".
pub fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The 1-, 5- and 15-minute load averages, as /proc/loadavg has them.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}
