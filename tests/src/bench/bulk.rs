//! (a) Bulk throughput and (f) CPU per GiB: `head -c N /dev/zero | ssh host 'cat > /dev/null'`,
//! `ssh host 'head -c N /dev/zero'`, and both ways at once (`ssh host cat`, N bytes echoed
//! back while they are sent) over each route, interleaved.
//!
//! Timing excludes connection setup: an upload is timed on the server around `cat`
//! (`date +%s%N`, same kernel clock), a download and an echo on the client from the first
//! byte received to EOF. Both-ways figures are per byte each way.
//!
//! CPU accounting (clock-tick resolution, `/proc/PID/stat` and `getrusage`):
//! * ssh: `getrusage(RUSAGE_CHILDREN)` of the harness before and after the run; ssh is the
//!   only child reaped in between (`ip netns exec` execs ssh in the same process).
//! * sshd: cutime + cstime of the sshd listener before and after (sshd reaps the session
//!   processes, which reap the command), minus the remote shell's own `times` (the shell and
//!   `cat`/`head`), so only sshd's share is left.
//! * sshgw: utime + stime of the daemon (all threads) before and after, read once the daemon
//!   has logged the session closed.
//!
//! The data is fed and drained by the harness over pipes (its CPU is not counted anywhere).
//! Each side's CPU includes the connection's setup; empty uploads (0 bytes) measure that
//! share, reported next to the per-GiB figures.

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use super::env::{BenchEnv, Route};
use super::stats::{Series, median, num, ratio};
use super::sys;

pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
pub const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Upload,
    Download,
    /// Both at once: the server echoes what the client sends (`ssh host cat`).
    Both,
}

impl Direction {
    pub const ALL: [Direction; 3] = [Direction::Upload, Direction::Download, Direction::Both];

    pub fn label(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
            Direction::Both => "both ways",
        }
    }
}

/// One transfer.
#[derive(Debug, Clone, Serialize)]
pub struct BulkSample {
    pub round: usize,
    pub route: Route,
    pub direction: Direction,
    pub bytes: u64,
    /// Transfer time (setup excluded, see the module docs).
    pub seconds: f64,
    pub mib_per_s: f64,
    /// Whole `ssh` run, connection setup included.
    pub wall_seconds: f64,
    pub ssh_cpu_s: f64,
    pub sshd_cpu_s: f64,
    /// The remote shell and its command (`cat` / `head`), from `times`.
    pub command_cpu_s: f64,
    /// None on the direct route.
    pub sshgw_cpu_s: Option<f64>,
}

impl BulkSample {
    /// The progress line of one sample: `LABEL round R/N`, throughput and CPU times.
    pub fn progress(&self, label: &str, rounds: usize) -> String {
        format!(
            "{label} round {}/{rounds} {:<8} {:<13} {:8.1} MiB/s  ssh {:.2}s sshd {:.2}s sshgw {}",
            self.round + 1,
            self.direction.label(),
            self.route.label(),
            self.mib_per_s,
            self.ssh_cpu_s,
            self.sshd_cpu_s,
            self.sshgw_cpu_s
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}s")),
        )
    }
}

/// How to run one transfer.
pub struct Transfer {
    pub route: Route,
    pub direction: Direction,
    pub bytes: u64,
}

const ELAPSED_TAG: &str = "sshgw-bench-elapsed-ns";

impl Transfer {
    fn remote_command(&self) -> String {
        match self.direction {
            Direction::Upload => format!(
                "t0=$(date +%s%N); cat > /dev/null; t1=$(date +%s%N); \
                 echo \"{ELAPSED_TAG} $((t1 - t0))\" >&2; times >&2"
            ),
            Direction::Download => format!("head -c {} /dev/zero; times >&2", self.bytes),
            Direction::Both => "cat; times >&2".to_owned(),
        }
    }

    /// Runs the transfer and accounts its CPU time. Nothing else may run in the lab
    /// meanwhile (the accounting is by process, not by session).
    pub fn run(&self, env: &BenchEnv<'_>, round: usize) -> Result<BulkSample> {
        let sshd_pid = env.sshd_pid();
        let gw_pid = if self.route.via_gateway() {
            Some(env.sshgw_pid()?)
        } else {
            None
        };
        sys::wait_no_children(sshd_pid, Duration::from_secs(30))?;
        let closed_before = env.sessions_closed();
        let sshd_before = sys::cpu_times(sshd_pid)?;
        let gw_before = gw_pid.map(sys::cpu_times).transpose()?;
        let ssh_before = sys::reaped_children_cpu();

        let label = format!(
            "bench {} {} {}",
            self.direction.label(),
            self.route.label(),
            self.bytes
        );
        let start = Instant::now();
        let (proc, mut stdin, mut stdout) = env.lab.procs().spawn_piped(
            &label,
            &mut env.ssh_command(self.route, false, &self.remote_command()),
        )?;
        let upload = self.direction != Direction::Download;
        let bytes = self.bytes;
        let writer = thread::Builder::new()
            .name("bench-upload".into())
            .spawn(move || -> std::io::Result<()> {
                if upload {
                    let buf = vec![0u8; 1 << 20];
                    let mut left = bytes;
                    while left > 0 {
                        let n = left.min(buf.len() as u64) as usize;
                        stdin.write_all(&buf[..n])?;
                        left -= n as u64;
                    }
                }
                drop(stdin);
                Ok(())
            })
            .context("spawning the upload writer")?;

        let mut buf = vec![0u8; 1 << 20];
        let mut received: u64 = 0;
        let mut first: Option<Instant> = None;
        loop {
            let n = stdout.read(&mut buf).context("reading ssh's stdout")?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            received += n as u64;
        }
        let last = Instant::now();
        let written = writer
            .join()
            .map_err(|_| anyhow!("the upload writer panicked"))?;
        let timeout = Duration::from_secs(120) + Duration::from_secs(bytes / (4 << 20));
        let status = proc.wait_exit(timeout)?;
        let wall_seconds = start.elapsed().as_secs_f64();
        let ssh_cpu_s = sys::reaped_children_cpu() - ssh_before;
        let stderr = proc.stderr_text();
        check_upload(&label, status, &stderr, &written)?;

        let seconds = match self.direction {
            Direction::Upload => {
                let ns: f64 = stderr
                    .lines()
                    .find_map(|l| l.strip_prefix(ELAPSED_TAG))
                    .and_then(|v| v.trim().parse().ok())
                    .with_context(|| format!("{label}: no elapsed time in {stderr:?}"))?;
                ns / 1e9
            }
            Direction::Download | Direction::Both => {
                if received != bytes {
                    bail!("{label}: received {received} of {bytes} bytes");
                }
                first.map_or(0.0, |first| (last - first).as_secs_f64())
            }
        };
        let command_cpu_s = sys::parse_shell_times(&stderr);

        sys::wait_no_children(sshd_pid, Duration::from_secs(60))?;
        let sshd_cpu_s =
            (sys::cpu_times(sshd_pid)?.total() - sshd_before.total() - command_cpu_s).max(0.0);
        let sshgw_cpu_s = match (gw_pid, gw_before) {
            (Some(pid), Some(before)) => {
                env.wait_sessions_closed(closed_before + 1, Duration::from_secs(60))?;
                Some(sys::cpu_times(pid)?.own - before.own)
            }
            _ => None,
        };
        if self.route == Route::SshgwLogged {
            env.clear_recordings()?;
        }
        Ok(BulkSample {
            round,
            route: self.route,
            direction: self.direction,
            bytes,
            seconds,
            mib_per_s: bytes as f64 / MIB / seconds,
            wall_seconds,
            ssh_cpu_s,
            sshd_cpu_s,
            command_cpu_s,
            sshgw_cpu_s,
        })
    }
}

/// Throughput of one route and direction.
#[derive(Debug, Clone, Serialize)]
pub struct BulkSummary {
    pub route: Route,
    pub direction: Direction,
    pub mib_per_s: Series,
    /// Median throughput / the direct route's median throughput.
    pub ratio_to_direct: f64,
    /// Medians of CPU seconds per GiB.
    pub ssh_cpu_s_per_gib: f64,
    pub sshd_cpu_s_per_gib: f64,
    pub sshgw_cpu_s_per_gib: Option<f64>,
}

/// (f) for one direction: sshgw's CPU per GiB against what ssh + sshd spend on the direct
/// route.
#[derive(Debug, Clone, Serialize)]
pub struct CpuSummary {
    pub direction: Direction,
    pub route: Route,
    pub direct_ssh_plus_sshd_s_per_gib: f64,
    pub sshgw_s_per_gib: f64,
    pub ratio: f64,
}

/// CPU seconds of an empty upload (connection setup and teardown only), medians.
#[derive(Debug, Clone, Serialize)]
pub struct SetupCpu {
    pub route: Route,
    pub ssh_s: f64,
    pub sshd_s: f64,
    pub sshgw_s: Option<f64>,
    pub samples: Vec<BulkSample>,
}

/// Empty uploads per route for [`SetupCpu`].
const EMPTY_RUNS: usize = 3;

#[derive(Debug, Clone, Serialize)]
pub struct BulkFigure {
    pub bytes: u64,
    pub rounds: usize,
    /// What a session costs with no data, per route.
    pub setup_cpu: Vec<SetupCpu>,
    pub samples: Vec<BulkSample>,
    pub summary: Vec<BulkSummary>,
    pub cpu: Vec<CpuSummary>,
    /// The device leg's cipher via sshgw (`ssh -v`), for the crypto floor.
    pub device_cipher: Option<String>,
}

impl BulkFigure {
    pub fn get(&self, route: Route, direction: Direction) -> Option<&BulkSummary> {
        self.summary
            .iter()
            .find(|s| s.route == route && s.direction == direction)
    }

    pub fn setup_cpu(&self, route: Route) -> Option<&SetupCpu> {
        self.setup_cpu.iter().find(|s| s.route == route)
    }

    /// The throughput total CPU predicts when ssh, sshd and sshgw share `cores` cores and
    /// nothing else limits: `cores` / (their CPU seconds per GiB), in MiB/s.
    pub fn cpu_bound_mib_s(s: &BulkSummary, cores: usize) -> f64 {
        let total =
            s.ssh_cpu_s_per_gib + s.sshd_cpu_s_per_gib + s.sshgw_cpu_s_per_gib.unwrap_or(0.0);
        cores as f64 / total * 1024.0
    }

    pub fn cpu(&self, route: Route, direction: Direction) -> Option<&CpuSummary> {
        self.cpu
            .iter()
            .find(|s| s.route == route && s.direction == direction)
    }
}

/// Runs `rounds` rounds; each round does every direction over every route in turn
/// (direct, sshgw, sshgw+logging, direct, ...).
pub fn run(
    env: &BenchEnv<'_>,
    bytes: u64,
    rounds: usize,
    log: &dyn Fn(&str),
) -> Result<BulkFigure> {
    let mut setup_cpu = Vec::new();
    for route in Route::ALL {
        let mut empty = Vec::new();
        for round in 0..EMPTY_RUNS {
            empty.push(
                Transfer {
                    route,
                    direction: Direction::Upload,
                    bytes: 0,
                }
                .run(env, round)?,
            );
        }
        let med = |f: &dyn Fn(&BulkSample) -> f64| median(&empty.iter().map(f).collect::<Vec<_>>());
        let cpu = SetupCpu {
            route,
            ssh_s: med(&|s| s.ssh_cpu_s),
            sshd_s: med(&|s| s.sshd_cpu_s),
            sshgw_s: route
                .via_gateway()
                .then(|| med(&|s| s.sshgw_cpu_s.unwrap_or(f64::NAN))),
            samples: empty,
        };
        log(&format!(
            "empty session via {:<13} CPU: ssh {:.3}s sshd {:.3}s sshgw {}",
            route.label(),
            cpu.ssh_s,
            cpu.sshd_s,
            cpu.sshgw_s
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.3}s"))
        ));
        setup_cpu.push(cpu);
    }
    let samples = interleaved(env, bytes, rounds, &Direction::ALL, "bulk", log)?;
    let mut figure = summarize(bytes, rounds, setup_cpu, samples);
    figure.device_cipher = env.negotiated(Route::Sshgw, true).ok().map(|n| n.cipher);
    Ok(figure)
}

pub fn summarize(
    bytes: u64,
    rounds: usize,
    setup_cpu: Vec<SetupCpu>,
    samples: Vec<BulkSample>,
) -> BulkFigure {
    let per_gib = |s: &BulkSample, cpu: f64| cpu / (s.bytes as f64 / GIB);
    let mut summary = Vec::new();
    let mut cpu = Vec::new();
    for direction in Direction::ALL {
        let pick = |route: Route| -> Vec<&BulkSample> {
            samples
                .iter()
                .filter(|s| s.route == route && s.direction == direction)
                .collect()
        };
        let direct_median = median(
            &pick(Route::Direct)
                .iter()
                .map(|s| s.mib_per_s)
                .collect::<Vec<_>>(),
        );
        let direct_cpu = median(
            &pick(Route::Direct)
                .iter()
                .map(|s| per_gib(s, s.ssh_cpu_s + s.sshd_cpu_s))
                .collect::<Vec<_>>(),
        );
        for route in Route::ALL {
            let these = pick(route);
            if these.is_empty() {
                continue;
            }
            let series = Series::new(
                "MiB/s",
                these.iter().map(|s| s.mib_per_s).collect::<Vec<_>>(),
            );
            let gw: Vec<f64> = these
                .iter()
                .filter_map(|s| s.sshgw_cpu_s.map(|c| per_gib(s, c)))
                .collect();
            let sshgw_cpu_s_per_gib = (!gw.is_empty()).then(|| median(&gw));
            summary.push(BulkSummary {
                route,
                direction,
                ratio_to_direct: ratio(series.median, direct_median),
                mib_per_s: series,
                ssh_cpu_s_per_gib: median(
                    &these
                        .iter()
                        .map(|s| per_gib(s, s.ssh_cpu_s))
                        .collect::<Vec<_>>(),
                ),
                sshd_cpu_s_per_gib: median(
                    &these
                        .iter()
                        .map(|s| per_gib(s, s.sshd_cpu_s))
                        .collect::<Vec<_>>(),
                ),
                sshgw_cpu_s_per_gib,
            });
            if let Some(gw) = sshgw_cpu_s_per_gib {
                cpu.push(CpuSummary {
                    direction,
                    route,
                    direct_ssh_plus_sshd_s_per_gib: direct_cpu,
                    sshgw_s_per_gib: gw,
                    ratio: ratio(gw, direct_cpu),
                });
            }
        }
    }
    BulkFigure {
        bytes,
        rounds,
        setup_cpu,
        samples,
        summary,
        cpu,
        device_cipher: None,
    }
}

/// `rounds` rounds of transfers, each round every direction over every route in turn (A B
/// A B), logged as `label`.
pub fn interleaved(
    env: &BenchEnv<'_>,
    bytes: u64,
    rounds: usize,
    directions: &[Direction],
    label: &str,
    log: &dyn Fn(&str),
) -> Result<Vec<BulkSample>> {
    let mut samples = Vec::new();
    for round in 0..rounds {
        for &direction in directions {
            for route in Route::ALL {
                let s = Transfer {
                    route,
                    direction,
                    bytes,
                }
                .run(env, round)?;
                log(&s.progress(label, rounds));
                samples.push(s);
            }
        }
    }
    Ok(samples)
}

impl BulkFigure {
    /// The figure's table: throughput, ratio to direct, the CPU-bound prediction
    /// `cpu_bound` gives, and CPU seconds per GiB.
    pub fn write_table(&self, md: &mut String, cpu_bound: impl Fn(&BulkSummary) -> f64) {
        use std::fmt::Write as _;
        md.push_str(
            "| Route | Direction | MiB/s | vs direct | CPU-bound (MiB/s) | ssh | sshd | sshgw |\n",
        );
        md.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
        for s in &self.summary {
            let _ = writeln!(
                md,
                "| {} | {} | {} [{}–{}] | {}× | {} | {} | {} | {} |",
                s.route.label(),
                s.direction.label(),
                num(s.mib_per_s.median, 0),
                num(s.mib_per_s.min, 0),
                num(s.mib_per_s.max, 0),
                num(s.ratio_to_direct, 2),
                num(cpu_bound(s), 0),
                num(s.ssh_cpu_s_per_gib, 2),
                num(s.sshd_cpu_s_per_gib, 2),
                s.sshgw_cpu_s_per_gib.map_or("–".to_owned(), |v| num(v, 2)),
            );
        }
    }
}

/// Fails an upload whose ssh exited with an error or whose writer could not write.
pub fn check_upload<E: std::fmt::Display>(
    label: &str,
    status: std::process::ExitStatus,
    stderr: &str,
    written: &Result<(), E>,
) -> Result<()> {
    if !status.success() {
        bail!(
            "{label}: ssh failed ({status}); stderr: {}",
            stderr.trim_end()
        );
    }
    if let Err(err) = written {
        bail!("{label}: writing to ssh failed: {err}");
    }
    Ok(())
}
