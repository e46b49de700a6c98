//! (b) Connection setup: sequential `ssh host true`, direct and through sshgw alternately,
//! timed from spawn to exit (a pidfd reports the exit; nothing polls).
//!
//! Both routes pin the client's key exchange to [`BENCH_KEX`] (what the gateway's device leg
//! negotiates), so the difference is what sshgw adds. A third series, interleaved with the
//! other two, is the direct route with the client's default key exchange (OpenSSH 9.2:
//! sntrup761x25519-sha512), i.e. what the same user gets without sshgw.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use super::env::{BENCH_KEX, BenchEnv, Failure, Negotiated, Route};
use super::stats::Series;
use super::sys;

/// Unmeasured runs per route before the measured ones.
const WARMUP: usize = 3;

#[derive(Debug, Clone, Serialize)]
pub struct SetupFigure {
    pub runs: usize,
    /// The key exchange of `direct_ms` and `sshgw_ms`.
    pub kex: &'static str,
    pub direct_ms: Series,
    pub sshgw_ms: Series,
    /// The direct route with the client's default key exchange.
    pub direct_default_kex_ms: Series,
    /// Runs that failed (not in the series).
    pub failures: Vec<Failure>,
    pub negotiated: Vec<Negotiated>,
    /// sshgw median - direct median.
    pub added_median_ms: f64,
    /// sshgw p99 - direct p99.
    pub added_p99_ms: f64,
}

/// A run slower than this gets a TCP snapshot (see [`BenchEnv::tcp_snapshot`]).
const SLOW: Duration = Duration::from_secs(5);
/// More failed connections than this end the figure.
const MAX_FAILURES: usize = 10;

/// One timed `ssh host true`: Ok(Ok(ms)), or Ok(Err(failure)) when ssh failed.
fn one(env: &BenchEnv<'_>, route: Route, pin_kex: bool) -> Result<Result<f64, Failure>> {
    let mut cmd = env.ssh_command_kex(route, pin_kex, false, "true");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = sys::spawn_timed(&mut cmd)?;
    let mut snapshot = None;
    let (status, exited) = match sys::try_wait_child(&mut child, SLOW)? {
        Some(done) => done,
        None => {
            snapshot = Some(env.tcp_snapshot());
            sys::wait_child(&mut child, Duration::from_secs(90))?
        }
    };
    let ms = (exited - start).as_secs_f64() * 1e3;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        return Ok(Err(Failure {
            route,
            reason: format!(
                "ssh via {}{} true failed after {ms:.0} ms ({status}): {}{}",
                route.label(),
                if pin_kex {
                    ""
                } else {
                    " (default key exchange)"
                },
                err.trim_end(),
                snapshot
                    .map(|s| format!("; at {SLOW:?}: {s}"))
                    .unwrap_or_default()
            ),
        }));
    }
    Ok(Ok(ms))
}

pub fn run(env: &BenchEnv<'_>, runs: usize, log: &dyn Fn(&str)) -> Result<SetupFigure> {
    let negotiated = vec![
        env.negotiated(Route::Direct, true)?,
        env.negotiated(Route::Sshgw, true)?,
        env.negotiated(Route::Direct, false)?,
        env.negotiated(Route::Sshgw, false)?,
    ];
    let mut failures = Vec::new();
    let mut record = |r: Result<f64, Failure>, into: Option<&mut Vec<f64>>| -> Result<()> {
        match r {
            Ok(ms) => {
                if let Some(v) = into {
                    v.push(ms);
                }
            }
            Err(failure) => {
                log(&failure.reason);
                let last = failure.reason.clone();
                failures.push(failure);
                if failures.len() > MAX_FAILURES {
                    bail!("more than {MAX_FAILURES} failed connections; last: {last}");
                }
            }
        }
        Ok(())
    };
    for _ in 0..WARMUP {
        record(one(env, Route::Direct, true)?, None)?;
        record(one(env, Route::Sshgw, true)?, None)?;
        record(one(env, Route::Direct, false)?, None)?;
    }
    let mut direct = Vec::with_capacity(runs);
    let mut gw = Vec::with_capacity(runs);
    let mut direct_default = Vec::with_capacity(runs);
    for i in 0..runs {
        record(one(env, Route::Direct, true)?, Some(&mut direct))?;
        record(one(env, Route::Sshgw, true)?, Some(&mut gw))?;
        record(one(env, Route::Direct, false)?, Some(&mut direct_default))?;
        if (i + 1) % 50 == 0 || i + 1 == runs {
            log(&format!("setup {}/{runs}", i + 1));
        }
    }
    let direct_ms = Series::new("ms", direct);
    let sshgw_ms = Series::new("ms", gw);
    Ok(SetupFigure {
        runs,
        kex: BENCH_KEX,
        direct_default_kex_ms: Series::new("ms", direct_default),
        negotiated,
        failures,
        added_median_ms: sshgw_ms.median - direct_ms.median,
        added_p99_ms: sshgw_ms.p99 - direct_ms.p99,
        direct_ms,
        sshgw_ms,
    })
}
