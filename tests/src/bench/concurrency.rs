//! (d) Concurrency: N idle interactive sessions held open at once.
//!
//! Each session is `ssh -tt host 'echo READY; exec sh -i'`: a remote pty with an interactive
//! shell that then sits idle. The client's stdin and stdout are pipes the harness keeps open
//! (no local pty, so only the server side uses pty devices). Sessions are opened with at most
//! `window` handshakes in flight; a session counts as set up when its marker arrives. The
//! setup rate is N over the time from the first spawn to the last marker. For the sshgw
//! route the daemon's RSS (`VmRSS`) and open file descriptors are read before the ramp, at
//! each quarter, and after all N are up (settled); "per session" is the growth over the
//! ramp divided by N. Then every client is killed and the harness waits until sshd and sshgw
//! have let go of them before the next ramp.

use std::os::fd::AsRawFd;
use std::process::{ChildStdin, ChildStdout};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::env::{BenchEnv, Failure, READY_MARKER, Route};
use super::stats::Series;
use super::sys;
use crate::process::Proc;

/// Longest a single session may take to come up.
const SESSION_TIMEOUT: Duration = Duration::from_secs(120);
/// A session not up after this long gets a TCP snapshot (at most [`MAX_SNAPSHOTS`]).
const SLOW: Duration = Duration::from_secs(40);
const MAX_SNAPSHOTS: usize = 5;

#[derive(Debug, Clone, Serialize)]
pub struct MemoryPoint {
    pub sessions: usize,
    pub rss_mib: f64,
    pub fds: usize,
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ramp {
    pub round: usize,
    pub route: Route,
    pub target: usize,
    pub reached: usize,
    pub seconds: f64,
    pub sessions_per_s: f64,
    /// Spawn-to-marker time of each session (under `window`-way concurrency).
    pub setup_ms: Series,
    /// sshgw only: before the ramp, at each quarter, and settled at the end.
    pub memory: Vec<MemoryPoint>,
    pub rss_per_session_kib: Option<f64>,
    pub fds_per_session: Option<f64>,
    /// Memory the whole machine used for the N sessions (MemAvailable drop), all processes.
    pub machine_mib_used: f64,
    /// Sessions that failed to come up (each was replaced by a new attempt).
    pub failures: Vec<Failure>,
    /// TCP snapshots of sessions that were slow to come up.
    pub slow_snapshots: Vec<String>,
    /// Why the ramp stopped early, if it did.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConcurrencyFigure {
    pub target: usize,
    pub window: usize,
    pub ramps: Vec<Ramp>,
}

impl ConcurrencyFigure {
    /// The last ramp of `route`.
    pub fn last(&self, route: Route) -> Option<&Ramp> {
        self.ramps.iter().rev().find(|r| r.route == route)
    }

    /// Median setup rate over the ramps of `route`.
    pub fn rate(&self, route: Route) -> f64 {
        super::stats::median(
            &self
                .ramps
                .iter()
                .filter(|r| r.route == route)
                .map(|r| r.sessions_per_s)
                .collect::<Vec<_>>(),
        )
    }
}

struct Pending {
    proc: Proc,
    stdin: ChildStdin,
    stdout: ChildStdout,
    seen: Vec<u8>,
    started: Instant,
    snapshot_taken: bool,
}

struct Open {
    proc: Proc,
    _stdin: ChildStdin,
    _stdout: ChildStdout,
}

fn mem_available_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn memory_point(pid: u32, sessions: usize) -> Result<MemoryPoint> {
    Ok(MemoryPoint {
        sessions,
        rss_mib: sys::rss_bytes(pid)? as f64 / 1024.0 / 1024.0,
        fds: sys::fd_count(pid)?,
        threads: sys::thread_count(pid)?,
    })
}

#[allow(unsafe_code)] // reason: fcntl(2) through libc
fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Opens up to `target` sessions over `route`; returns what was reached.
#[allow(unsafe_code)] // reason: poll(2) through libc
fn ramp(
    env: &BenchEnv<'_>,
    route: Route,
    round: usize,
    target: usize,
    window: usize,
    log: &dyn Fn(&str),
) -> Result<(Ramp, Vec<Open>)> {
    let gw_pid = if route.via_gateway() {
        Some(env.sshgw_pid()?)
    } else {
        None
    };
    let mem_before = mem_available_mib();
    let mut memory = Vec::new();
    if let Some(pid) = gw_pid {
        memory.push(memory_point(pid, 0)?);
    }
    let remote = format!("echo {READY_MARKER}; exec sh -i");
    let mut pending: Vec<Pending> = Vec::new();
    let mut open: Vec<Open> = Vec::with_capacity(target);
    let mut setup_ms = Vec::with_capacity(target);
    let mut spawned = 0;
    let mut next_quarter = 1;
    let mut error = None;
    let mut failures = Vec::new();
    let mut slow_snapshots = Vec::new();
    let max_failures = (target / 50).max(5);
    let start = Instant::now();
    'ramp: while open.len() < target {
        while pending.len() < window && open.len() + pending.len() < target {
            let mut cmd = env.ssh_command(route, true, &remote);
            let (proc, stdin, stdout) = env
                .lab
                .procs()
                .spawn_piped(&format!("bench idle {} {spawned}", route.label()), &mut cmd)?;
            set_nonblocking(stdout.as_raw_fd());
            pending.push(Pending {
                proc,
                stdin,
                stdout,
                seen: Vec::new(),
                started: Instant::now(),
                snapshot_taken: false,
            });
            spawned += 1;
        }
        let mut fds: Vec<libc::pollfd> = pending
            .iter()
            .map(|p| libc::pollfd {
                fd: p.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("poll on ssh stdouts");
        }
        // `fds[i]` belongs to `pending[i]`; both are swap_removed together.
        let mut i = 0;
        while i < pending.len() {
            let p = &mut pending[i];
            if fds[i].revents != 0 {
                let mut buf = [0u8; 4096];
                // SAFETY: reading into a local buffer from an fd we own.
                let got =
                    unsafe { libc::read(p.stdout.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if got > 0 {
                    p.seen.extend_from_slice(&buf[..got as usize]);
                } else if got == 0 {
                    let p = pending.swap_remove(i);
                    fds.swap_remove(i);
                    let _ = p.proc.kill();
                    let why = format!(
                        "a session via {} ended after {:.1}s before it was up ({} were open): {}",
                        route.label(),
                        p.started.elapsed().as_secs_f64(),
                        open.len(),
                        p.proc.stderr_text().trim_end()
                    );
                    log(&why);
                    failures.push(Failure { route, reason: why });
                    if failures.len() > max_failures {
                        error = Some(format!("more than {max_failures} sessions failed"));
                        break 'ramp;
                    }
                    continue;
                }
            }
            if p.seen
                .windows(READY_MARKER.len())
                .any(|w| w == READY_MARKER.as_bytes())
            {
                let p = pending.swap_remove(i);
                fds.swap_remove(i);
                setup_ms.push(p.started.elapsed().as_secs_f64() * 1e3);
                open.push(Open {
                    proc: p.proc,
                    _stdin: p.stdin,
                    _stdout: p.stdout,
                });
                continue;
            }
            if !p.snapshot_taken
                && p.started.elapsed() > SLOW
                && slow_snapshots.len() < MAX_SNAPSHOTS
            {
                p.snapshot_taken = true;
                slow_snapshots.push(format!(
                    "{} session not up after {SLOW:?}: {}",
                    route.label(),
                    env.tcp_snapshot()
                ));
            }
            if p.started.elapsed() > SESSION_TIMEOUT {
                error = Some(format!(
                    "a session via {} was not up within {SESSION_TIMEOUT:?} ({} were open): {}",
                    route.label(),
                    open.len(),
                    p.proc.stderr_text().trim_end()
                ));
                break 'ramp;
            }
            i += 1;
        }
        if let Some(pid) = gw_pid
            && next_quarter < 4
            && open.len() >= target * next_quarter / 4
        {
            memory.push(memory_point(pid, open.len())?);
            next_quarter += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(err) = &mut error {
        err.push('\n');
        err.push_str(&env.diagnostics());
        log(err);
    }
    for p in pending {
        let _ = p.proc.kill();
    }
    let reached = open.len();
    log(&format!(
        "ramp {} via {}: {reached}/{target} sessions in {seconds:.1}s ({:.1}/s)",
        round + 1,
        route.label(),
        reached as f64 / seconds
    ));
    // Let keepalive timers, buffers and allocator caches settle before the final reading.
    std::thread::sleep(Duration::from_secs(2));
    let mut rss_per_session_kib = None;
    let mut fds_per_session = None;
    if let Some(pid) = gw_pid {
        let end = memory_point(pid, reached)?;
        if reached > 0 {
            let base = &memory[0];
            rss_per_session_kib = Some((end.rss_mib - base.rss_mib) * 1024.0 / reached as f64);
            fds_per_session = Some((end.fds as f64 - base.fds as f64) / reached as f64);
        }
        memory.push(end);
    }
    let machine_mib_used = mem_before - mem_available_mib();
    Ok((
        Ramp {
            round,
            route,
            target,
            reached,
            seconds,
            sessions_per_s: reached as f64 / seconds,
            setup_ms: Series::new("ms", setup_ms),
            failures,
            slow_snapshots,
            memory,
            rss_per_session_kib,
            fds_per_session,
            machine_mib_used,
            error,
        },
        open,
    ))
}

/// Kills every client and waits until sshd has reaped all sessions and (for sshgw) the
/// daemon is back to its open-file count from before the ramp.
fn teardown(env: &BenchEnv<'_>, open: Vec<Open>, gw_fds_before: Option<usize>) -> Result<()> {
    for o in &open {
        let _ = o.proc.kill();
    }
    drop(open);
    sys::wait_no_children(env.sshd_pid(), Duration::from_secs(300))
        .context("sshd did not close every session")?;
    if let Some(before) = gw_fds_before {
        let pid = env.sshgw_pid()?;
        crate::wait::poll_until(
            "sshgw to close the sessions' file descriptors",
            Duration::from_secs(120),
            Duration::from_millis(100),
            || Ok((sys::fd_count(pid)? <= before + 4).then_some(())),
        )?;
    }
    Ok(())
}

pub fn run(
    env: &BenchEnv<'_>,
    target: usize,
    window: usize,
    rounds: usize,
    log: &dyn Fn(&str),
) -> Result<ConcurrencyFigure> {
    let mut ramps = Vec::new();
    for round in 0..rounds {
        for route in [Route::Direct, Route::Sshgw] {
            let fds_before = if route.via_gateway() {
                Some(sys::fd_count(env.sshgw_pid()?)?)
            } else {
                None
            };
            let (r, open) = ramp(env, route, round, target, window, log)?;
            teardown(env, open, fds_before)?;
            ramps.push(r);
        }
    }
    Ok(ConcurrencyFigure {
        target,
        window,
        ramps,
    })
}
