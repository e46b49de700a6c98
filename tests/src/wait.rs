//! Bounded waiting on concrete conditions.
//!
//! The harness never sleeps as a readiness check: it polls a concrete condition (a log line, a
//! status answer, a process exit) with a short interval until a deadline.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Default polling interval for log files, process exits and status queries.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `check` every `interval` until it returns `Ok(Some(value))` (done), an error (abort),
/// or `timeout` elapses (error naming `what`). `check` runs at least once, and once more right
/// at the deadline.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(interval.min(deadline - now));
    }
}
