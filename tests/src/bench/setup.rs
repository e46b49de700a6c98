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

use super::env::{BENCH_KEX, BenchEnv, Negotiated, Route};
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
    pub negotiated: Vec<Negotiated>,
    /// sshgw median - direct median.
    pub added_median_ms: f64,
    /// sshgw p99 - direct p99.
    pub added_p99_ms: f64,
}

fn one(env: &BenchEnv<'_>, route: Route, pin_kex: bool) -> Result<f64> {
    let mut cmd = env.ssh_command_kex(route, pin_kex, false, "true");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = sys::spawn_timed(&mut cmd)?;
    let (status, exited) = sys::wait_child(&mut child, Duration::from_secs(90))?;
    let ms = (exited - start).as_secs_f64() * 1e3;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        bail!(
            "ssh via {} true failed ({status}): {}",
            route.label(),
            err.trim_end()
        );
    }
    Ok(ms)
}

pub fn run(env: &BenchEnv<'_>, runs: usize, log: &dyn Fn(&str)) -> Result<SetupFigure> {
    let negotiated = vec![
        env.negotiated(Route::Direct, true)?,
        env.negotiated(Route::Sshgw, true)?,
        env.negotiated(Route::Direct, false)?,
        env.negotiated(Route::Sshgw, false)?,
    ];
    for _ in 0..WARMUP {
        one(env, Route::Direct, true)?;
        one(env, Route::Sshgw, true)?;
        one(env, Route::Direct, false)?;
    }
    let mut direct = Vec::with_capacity(runs);
    let mut gw = Vec::with_capacity(runs);
    let mut direct_default = Vec::with_capacity(runs);
    for i in 0..runs {
        direct.push(one(env, Route::Direct, true)?);
        gw.push(one(env, Route::Sshgw, true)?);
        direct_default.push(one(env, Route::Direct, false)?);
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
        added_median_ms: sshgw_ms.median - direct_ms.median,
        added_p99_ms: sshgw_ms.p99 - direct_ms.p99,
        direct_ms,
        sshgw_ms,
    })
}
