//! (c) Interactive latency: one keystroke's round trip over a pty.
//!
//! The harness holds the master of a pseudo-terminal whose slave is the controlling terminal
//! of `ssh -tt host 'stty raw -echo; echo READY; exec cat'` (ssh puts the local terminal in
//! raw mode; the remote terminal is raw without echo, so `cat` alone sends each byte back).
//! A sample is the time from writing one byte to the master until that byte is read back
//! (`Instant`, a monotonic clock; `poll` wakes the reader). Direct and sshgw sessions are
//! open at the same time and sampled alternately, a few milliseconds apart.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::env::{BenchEnv, READY_MARKER, Route};
use super::stats::Series;
use crate::process::Proc;

/// Pause between two samples (a fast typist's inter-key gap is ~100 ms; this keeps the run
/// short while never queueing keystrokes).
const GAP: Duration = Duration::from_millis(3);
const WARMUP: usize = 20;
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct LatencyFigure {
    pub samples_per_route: usize,
    pub direct_ms: Series,
    pub sshgw_ms: Series,
    pub added_median_ms: f64,
    pub added_p99_ms: f64,
}

struct EchoPty {
    proc: Proc,
    master: File,
}

/// Waits up to `timeout` for the master to become readable.
#[allow(unsafe_code)] // reason: poll(2) through libc
fn poll_readable(fd: i32, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("poll on the pty master");
    }
    Ok(n > 0)
}

impl EchoPty {
    #[allow(unsafe_code)] // reason: openpty(3) and fcntl(2) through libc
    fn open(env: &BenchEnv<'_>, route: Route) -> Result<Self> {
        let (mut master_fd, mut slave_fd) = (-1, -1);
        let ws = libc::winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two fds; name and termios are NULL.
        let rc = unsafe {
            libc::openpty(
                &mut master_fd,
                &mut slave_fd,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("openpty");
        }
        // SAFETY: both fds are fresh and owned by nobody else.
        let (master, slave) = unsafe {
            (
                OwnedFd::from_raw_fd(master_fd),
                OwnedFd::from_raw_fd(slave_fd),
            )
        };
        for fd in [&master, &slave] {
            // SAFETY: fcntl on an fd we own.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        let remote = format!("stty raw -echo; echo {READY_MARKER}; exec cat");
        let (proc, _) = env.lab.procs().spawn_pty(
            &format!("bench echo pty {}", route.label()),
            &mut env.ssh_command(route, true, &remote),
            &slave,
        )?;
        drop(slave);
        let mut pty = Self {
            proc,
            master: File::from(master),
        };
        pty.read_until(READY_MARKER.as_bytes(), Duration::from_secs(60))
            .with_context(|| format!("echo session via {}", route.label()))?;
        // Drain the marker's line end.
        while poll_readable(pty.master.as_raw_fd(), Duration::from_millis(100))? {
            let mut buf = [0u8; 256];
            if pty.master.read(&mut buf)? == 0 {
                break;
            }
        }
        Ok(pty)
    }

    fn read_until(&mut self, needle: &[u8], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "no {:?} from the pty within {timeout:?}; got {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&seen)
                );
            }
            if !poll_readable(self.master.as_raw_fd(), deadline - now)? {
                continue;
            }
            let mut buf = [0u8; 4096];
            let n = self.master.read(&mut buf).unwrap_or(0);
            if n == 0 {
                bail!(
                    "ssh on the pty exited; output {:?}, stderr {}",
                    String::from_utf8_lossy(&seen),
                    self.proc.stderr_text()
                );
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(needle.len()).any(|w| w == needle) {
                return Ok(());
            }
        }
    }

    /// One keystroke round trip in milliseconds.
    fn sample(&mut self, byte: u8) -> Result<f64> {
        let fd = self.master.as_raw_fd();
        let start = Instant::now();
        self.master
            .write_all(&[byte])
            .context("writing to the pty master")?;
        loop {
            let waited = start.elapsed();
            if waited >= SAMPLE_TIMEOUT || !poll_readable(fd, SAMPLE_TIMEOUT - waited)? {
                bail!("keystroke {byte:#x} was not echoed within {SAMPLE_TIMEOUT:?}");
            }
            let mut buf = [0u8; 64];
            let n = self
                .master
                .read(&mut buf)
                .context("reading the pty master")?;
            if n == 0 {
                bail!("the pty closed");
            }
            if buf[..n].contains(&byte) {
                return Ok(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }

    fn close(self) {
        let _ = self.proc.kill();
    }
}

pub fn run(env: &BenchEnv<'_>, samples: usize, log: &dyn Fn(&str)) -> Result<LatencyFigure> {
    let mut direct = EchoPty::open(env, Route::Direct)?;
    let mut gw = EchoPty::open(env, Route::Sshgw)?;
    let key = |i: usize| b'a' + (i % 26) as u8;
    for i in 0..WARMUP {
        direct.sample(key(i))?;
        gw.sample(key(i))?;
    }
    let mut d = Vec::with_capacity(samples);
    let mut g = Vec::with_capacity(samples);
    for i in 0..samples {
        thread::sleep(GAP);
        d.push(direct.sample(key(i))?);
        thread::sleep(GAP);
        g.push(gw.sample(key(i))?);
        if (i + 1) % 250 == 0 || i + 1 == samples {
            log(&format!("keystrokes {}/{samples}", i + 1));
        }
    }
    direct.close();
    gw.close();
    let direct_ms = Series::new("ms", d);
    let sshgw_ms = Series::new("ms", g);
    Ok(LatencyFigure {
        samples_per_route: samples,
        added_median_ms: sshgw_ms.median - direct_ms.median,
        added_p99_ms: sshgw_ms.p99 - direct_ms.p99,
        direct_ms,
        sshgw_ms,
    })
}
