//! Waiting on a condition with a deadline, never a bare sleep: poll until a
//! closure returns `Some`, or give up (`poll_until*`) or panic naming what
//! was awaited (`wait_*`) when the time is up. Sleeps between polls.

use std::future::Future;
use std::time::{Duration, Instant};

/// Poll interval of [`wait_for`].
pub const POLL: Duration = Duration::from_millis(200);

/// Call `f` every `every` until it returns `Some`, for at most `timeout` (`None` then).
/// `f` is called at least once.
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// [`poll_until`] for an async condition (sleeps on the tokio timer).
pub async fn poll_until_async<T, F, Fut>(timeout: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Wait until `f` returns `Some`, polling every `every`; panics with `what` after `timeout`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    f: impl FnMut() -> Option<T>,
) -> T {
    poll_until(timeout, every, f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Wait until the async `f` returns `Some`, polling every [`POLL`]; panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_until_async(timeout, POLL, f).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_returns_the_first_value_and_gives_up_at_the_deadline() {
        let mut n = 0;
        let got = poll_until(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(got, Some(3));
        let start = Instant::now();
        let none: Option<()> =
            poll_until(Duration::from_millis(50), Duration::from_millis(5), || None);
        assert!(none.is_none());
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible")]
    fn wait_until_names_what_it_waited_for() {
        wait_until::<()>(
            "the impossible",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || None,
        );
    }
}
