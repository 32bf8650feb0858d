//! Restart policy and crash-loop back-off of a container. Pure.
//!
//! A kubelet waits 10 s after the first crash, doubling to 5 min, and forgets
//! the back-off once a container has run for 10 min. The stand-in is made for
//! tests and keeps the shape with shorter times: 1 s doubling to 30 s, reset
//! after 60 s of running (twice the cap, as the kubelet's 10 min is twice 5 min).

use std::time::Duration;

/// The first delay after a crash.
pub const INITIAL: Duration = Duration::from_secs(1);
/// The longest delay.
pub const MAX: Duration = Duration::from_secs(30);
/// A run this long resets the back-off.
pub const RESET_AFTER: Duration = Duration::from_secs(60);

/// pod.spec.restartPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Always restart.
    Always,
    /// Restart after a non-zero exit.
    OnFailure,
    /// Never restart.
    Never,
}

impl Policy {
    /// From the spec's string (default Always).
    pub fn parse(s: Option<&str>) -> Policy {
        match s {
            Some("OnFailure") => Policy::OnFailure,
            Some("Never") => Policy::Never,
            _ => Policy::Always,
        }
    }

    /// Whether a container that exited with `code` is started again.
    pub fn restarts(self, code: i32) -> bool {
        match self {
            Policy::Always => true,
            Policy::OnFailure => code != 0,
            Policy::Never => false,
        }
    }
}

/// The back-off state of one container.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    /// The delay before the next start, given how long the last run lasted.
    pub fn after_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= RESET_AFTER {
            self.next = None;
        }
        let d = self.next.unwrap_or(INITIAL);
        self.next = Some((d * 2).min(MAX));
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_long_run() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(1);
        let got: Vec<u64> = (0..7).map(|_| b.after_exit(short).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.after_exit(Duration::from_secs(61)), INITIAL);
        assert_eq!(b.after_exit(short), Duration::from_secs(2));
    }

    #[test]
    fn policies_decide_restarts() {
        assert!(Policy::parse(None).restarts(0));
        assert!(Policy::parse(Some("OnFailure")).restarts(1));
        assert!(!Policy::parse(Some("OnFailure")).restarts(0));
        assert!(!Policy::parse(Some("Never")).restarts(1));
    }
}
