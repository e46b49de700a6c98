//! (a) pinned: the bulk transfers with sshgw on one core and ssh and sshd on the other, as
//! on a router whose cores are sshgw's own.
//!
//! The affinities are set with `sched_setaffinity(2)` (what `taskset` does): every thread of
//! the daemon gets core 1 (threads it starts later inherit it), the sshd listener gets core
//! 0 (its per-connection processes are forked from it and inherit it), and so does the
//! harness thread that spawns ssh and the writer thread it starts, so ssh runs on core 0
//! too. The transfers are those of [`bulk`](super::bulk): upload and download over every
//! route, interleaved, round by round. Kernel work (veth, softirqs) runs where the kernel
//! puts it, mostly on the core of the sending process.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use serde::Serialize;

use super::bulk::{self, BulkFigure, Direction, GIB, MIB};
use super::env::{BenchEnv, Route};
use super::floor::SummaryRow;
use super::stats::{Series, median, num, ratio, size};
use super::sys;

/// Core of sshgw; ssh and sshd get [`CLIENT_CORE`].
pub const GATEWAY_CORE: usize = 1;
pub const CLIENT_CORE: usize = 0;

/// The directions of the pinned figure.
pub const DIRECTIONS: [Direction; 2] = [Direction::Upload, Direction::Download];

fn one_core(core: usize) -> Result<CpuSet> {
    let mut set = CpuSet::new();
    set.set(core).context("CPU set")?;
    Ok(set)
}

/// Every thread of `pid` (`/proc/PID/task`).
fn tasks(pid: u32) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing /proc/{pid}/task"))?
    {
        if let Some(tid) = t?.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(tid);
        }
    }
    Ok(out)
}

/// Pins every current thread of `pid` to `core`.
fn pin_process(pid: u32, core: usize) -> Result<()> {
    let set = one_core(core)?;
    for tid in tasks(pid)? {
        // A thread that has just exited is not an error.
        if let Err(err) = sched_setaffinity(Pid::from_raw(tid), &set)
            && err != nix::errno::Errno::ESRCH
        {
            bail!("pinning thread {tid} of {pid} to core {core}: {err}");
        }
    }
    Ok(())
}

/// Fails unless every thread of `pid` is on `core` only.
fn check_pinned(pid: u32, core: usize, what: &str) -> Result<()> {
    for tid in tasks(pid)? {
        let Ok(set) = sched_getaffinity(Pid::from_raw(tid)) else {
            continue;
        };
        let cores: Vec<usize> = (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect();
        if cores != [core] {
            bail!("{what} thread {tid} runs on cores {cores:?}, not {core}");
        }
    }
    Ok(())
}

/// Restores the harness thread's affinity when dropped.
struct ThreadAffinity(CpuSet);

impl Drop for ThreadAffinity {
    fn drop(&mut self) {
        let _ = sched_setaffinity(Pid::from_raw(0), &self.0);
    }
}

/// The outcome of the pinned figure: the interleaved transfers and the many-connections
/// figure (which may fail on its own).
pub struct Pinned {
    pub bulk: BulkFigure,
    pub parallel: Option<ParallelFigure>,
    pub parallel_error: Option<String>,
}

/// Runs `rounds` rounds of upload and download over every route, pinned, then the
/// many-connections figure ([`run_parallel`]) with the same pinning.
pub fn run(env: &BenchEnv<'_>, bytes: u64, rounds: usize, log: &dyn Fn(&str)) -> Result<Pinned> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    if cores < 2 {
        bail!("the pinned figure needs 2 cores, this machine has {cores}");
    }
    let gw_pid = env.sshgw_pid()?;
    let sshd_pid = env.sshd_pid();
    pin_process(gw_pid, GATEWAY_CORE)?;
    pin_process(sshd_pid, CLIENT_CORE)?;
    let _restore = ThreadAffinity(sched_getaffinity(Pid::from_raw(0)).context("affinity")?);
    sched_setaffinity(Pid::from_raw(0), &one_core(CLIENT_CORE)?)
        .context("pinning the harness thread")?;
    log(&format!(
        "pinned: sshgw (pid {gw_pid}) on core {GATEWAY_CORE}; sshd (pid {sshd_pid}), ssh and the harness on core {CLIENT_CORE}"
    ));

    let samples = bulk::interleaved(env, bytes, rounds, &DIRECTIONS, "pinned", log)?;
    let (parallel, parallel_error) = match run_parallel(env, bytes, rounds, log) {
        Ok(p) => (Some(p), None),
        Err(err) => {
            log(&format!("parallel uploads FAILED: {err:#}"));
            (None, Some(format!("{err:#}")))
        }
    };
    // The daemon's threads started during the run must have inherited the pinning.
    check_pinned(gw_pid, GATEWAY_CORE, "sshgw")?;
    check_pinned(sshd_pid, CLIENT_CORE, "sshd")?;
    let mut figure = bulk::summarize(bytes, rounds, Vec::new(), samples);
    figure.device_cipher = env.negotiated(Route::Sshgw, true).ok().map(|n| n.cipher);
    Ok(Pinned {
        bulk: figure,
        parallel,
        parallel_error,
    })
}

/// What the CPU accounting predicts when pinned: the slower of the client core (ssh and
/// sshd) and the gateway core (sshgw; the direct route has none), in MiB/s.
pub fn cpu_bound_mib_s(s: &bulk::BulkSummary) -> f64 {
    let client = s.ssh_cpu_s_per_gib + s.sshd_cpu_s_per_gib;
    let gateway = s.sshgw_cpu_s_per_gib.unwrap_or(0.0);
    1024.0 / client.max(gateway)
}

/// Target: at least as fast as direct, both directions, with and without logging.
pub const TARGET_RATIO: f64 = 1.0;

/// Summary lines: throughput via sshgw against direct, pinned.
pub fn rows(b: &BulkFigure) -> Vec<SummaryRow> {
    let mut rows = Vec::new();
    for direction in DIRECTIONS {
        let Some(d) = b.get(Route::Direct, direction) else {
            continue;
        };
        for route in [Route::Sshgw, Route::SshgwLogged] {
            let Some(g) = b.get(route, direction) else {
                continue;
            };
            rows.push(SummaryRow {
                figure: format!(
                    "a) pinned, {} {}{} (MiB/s)",
                    direction.label(),
                    size(b.bytes),
                    if route == Route::Sshgw {
                        ""
                    } else {
                        ", command logging"
                    }
                ),
                direct: num(d.mib_per_s.median, 0),
                sshgw: num(g.mib_per_s.median, 0),
                comparison: format!("{}×", num(g.ratio_to_direct, 2)),
                target: "≥ 1.0×",
                ok: Some(g.ratio_to_direct >= TARGET_RATIO),
            });
        }
    }
    rows
}

/// The details table of the pinned figure.
pub fn markdown(b: &BulkFigure, md: &mut String) {
    let _ = writeln!(
        md,
        "\n**Bulk transfers, pinned** (sshgw on core {GATEWAY_CORE}, ssh and sshd on core {CLIENT_CORE}; {} each way, {} rounds; MiB/s median [min–max]; CPU seconds per GiB, medians; device leg `{}`)\n",
        size(b.bytes),
        b.rounds,
        b.device_cipher.as_deref().unwrap_or("unknown")
    );
    b.write_table(md, cpu_bound_mib_s);
    md.push_str(
        "\nCPU-bound: 1 GiB over the larger of ssh + sshd (core 0) and sshgw (core 1) CPU seconds per GiB.\n",
    );
}

/// Parallel uploads of the many-connections figure.
pub const PARALLEL: usize = 8;

const WINDOW_TAG: &str = "sshgw-bench-window-ns";

/// One round of [`PARALLEL`] simultaneous uploads over one route.
#[derive(Debug, Clone, Serialize)]
pub struct ParallelSample {
    pub round: usize,
    pub route: Route,
    pub connections: usize,
    pub bytes_each: u64,
    /// From the first upload's start to the last one's end, on the server's clock.
    pub seconds: f64,
    /// All connections' bytes over `seconds`.
    pub aggregate_mib_s: f64,
    /// sshgw's CPU seconds over the round (setup included); None on the direct route.
    pub sshgw_cpu_s: Option<f64>,
    /// sshgw's CPU over the round's wall time (1.0: its core was busy throughout).
    pub sshgw_core_busy: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParallelSummary {
    pub route: Route,
    pub aggregate_mib_s: Series,
    pub ratio_to_direct: f64,
    pub sshgw_cpu_s_per_gib: Option<f64>,
    pub sshgw_core_busy: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParallelFigure {
    pub connections: usize,
    pub bytes_each: u64,
    pub rounds: usize,
    pub samples: Vec<ParallelSample>,
    pub summary: Vec<ParallelSummary>,
}

impl ParallelFigure {
    pub fn get(&self, route: Route) -> Option<&ParallelSummary> {
        self.summary.iter().find(|s| s.route == route)
    }
}

/// [`PARALLEL`] uploads of `bytes_each` at once over `route`, timed on the server: from the
/// earliest `cat` start to the latest end.
fn parallel_round(
    env: &BenchEnv<'_>,
    route: Route,
    bytes_each: u64,
    round: usize,
) -> Result<ParallelSample> {
    let gw_pid = env.sshgw_pid()?;
    let closed_before = env.sessions_closed();
    let gw_before = sys::cpu_times(gw_pid)?.own;
    let started = std::time::Instant::now();
    let remote = format!(
        "t0=$(date +%s%N); cat > /dev/null; t1=$(date +%s%N); echo \"{WINDOW_TAG} $t0 $t1\" >&2"
    );
    let mut running = Vec::new();
    for i in 0..PARALLEL {
        let label = format!("bench parallel {} {i}", route.label());
        let (proc, mut stdin, stdout) = env
            .lab
            .procs()
            .spawn_piped(&label, &mut env.ssh_command(route, false, &remote))?;
        let writer = thread::Builder::new()
            .name("bench-parallel".into())
            .spawn(move || -> std::io::Result<()> {
                let buf = vec![0u8; 1 << 20];
                let mut left = bytes_each;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    stdin.write_all(&buf[..n])?;
                    left -= n as u64;
                }
                Ok(())
            })
            .context("spawning an upload writer")?;
        running.push((label, proc, writer, stdout));
    }
    let (mut first, mut last) = (u128::MAX, 0u128);
    for (label, proc, writer, mut stdout) in running {
        let mut sink = Vec::new();
        stdout
            .read_to_end(&mut sink)
            .with_context(|| format!("{label}: reading ssh's stdout"))?;
        let written = writer
            .join()
            .map_err(|_| anyhow!("{label}: the upload writer panicked"))?;
        let timeout = Duration::from_secs(120) + Duration::from_secs(bytes_each / (1 << 20));
        let status = proc.wait_exit(timeout)?;
        let stderr = proc.stderr_text();
        super::bulk::check_upload(&label, status, &stderr, &written)?;
        let (t0, t1) = stderr
            .lines()
            .find_map(|l| {
                let mut it = l.strip_prefix(WINDOW_TAG)?.split_whitespace();
                Some((
                    it.next()?.parse::<u128>().ok()?,
                    it.next()?.parse::<u128>().ok()?,
                ))
            })
            .with_context(|| format!("{label}: no window in {stderr:?}"))?;
        first = first.min(t0);
        last = last.max(t1);
    }
    let wall = started.elapsed().as_secs_f64();
    let sshgw_cpu_s = if route.via_gateway() {
        env.wait_sessions_closed(closed_before + PARALLEL, Duration::from_secs(60))?;
        Some(sys::cpu_times(gw_pid)?.own - gw_before)
    } else {
        None
    };
    if route == Route::SshgwLogged {
        env.clear_recordings()?;
    }
    let seconds = (last.saturating_sub(first)) as f64 / 1e9;
    let total = bytes_each * PARALLEL as u64;
    Ok(ParallelSample {
        round,
        route,
        connections: PARALLEL,
        bytes_each,
        seconds,
        aggregate_mib_s: total as f64 / MIB / seconds,
        sshgw_cpu_s,
        sshgw_core_busy: sshgw_cpu_s.map(|c| c / wall),
    })
}

/// The many-connections figure: [`PARALLEL`] uploads at once, direct and via sshgw
/// alternately, `total` bytes in all per round. Call with the affinities of [`run`] set.
pub fn run_parallel(
    env: &BenchEnv<'_>,
    total: u64,
    rounds: usize,
    log: &dyn Fn(&str),
) -> Result<ParallelFigure> {
    let bytes_each = total / PARALLEL as u64;
    let routes = [Route::Direct, Route::Sshgw];
    let mut samples = Vec::new();
    for round in 0..rounds {
        for route in routes {
            let s = parallel_round(env, route, bytes_each, round)?;
            log(&format!(
                "parallel round {}/{rounds} {PARALLEL} uploads {:<13} {:8.1} MiB/s aggregate  sshgw {}",
                round + 1,
                route.label(),
                s.aggregate_mib_s,
                s.sshgw_cpu_s.map_or_else(
                    || "-".to_owned(),
                    |c| format!(
                        "{c:.2}s ({:.0}% of its core)",
                        100.0 * s.sshgw_core_busy.unwrap_or(f64::NAN)
                    )
                ),
            ));
            samples.push(s);
        }
    }
    let direct = median(
        &samples
            .iter()
            .filter(|s| s.route == Route::Direct)
            .map(|s| s.aggregate_mib_s)
            .collect::<Vec<_>>(),
    );
    let mut summary = Vec::new();
    for route in routes {
        let these: Vec<&ParallelSample> = samples.iter().filter(|s| s.route == route).collect();
        let series = Series::new(
            "MiB/s",
            these.iter().map(|s| s.aggregate_mib_s).collect::<Vec<_>>(),
        );
        let gw: Vec<f64> = these
            .iter()
            .filter_map(|s| {
                s.sshgw_cpu_s
                    .map(|c| c / (s.bytes_each as f64 * PARALLEL as f64 / GIB))
            })
            .collect();
        let busy: Vec<f64> = these.iter().filter_map(|s| s.sshgw_core_busy).collect();
        summary.push(ParallelSummary {
            route,
            ratio_to_direct: ratio(series.median, direct),
            aggregate_mib_s: series,
            sshgw_cpu_s_per_gib: (!gw.is_empty()).then(|| median(&gw)),
            sshgw_core_busy: (!busy.is_empty()).then(|| median(&busy)),
        });
    }
    Ok(ParallelFigure {
        connections: PARALLEL,
        bytes_each,
        rounds,
        samples,
        summary,
    })
}

/// Summary line of the many-connections figure.
pub fn parallel_rows(p: &ParallelFigure) -> Vec<SummaryRow> {
    let (Some(d), Some(g)) = (p.get(Route::Direct), p.get(Route::Sshgw)) else {
        return Vec::new();
    };
    vec![SummaryRow {
        figure: format!(
            "a) pinned, {} parallel uploads of {} (aggregate MiB/s)",
            p.connections,
            size(p.bytes_each)
        ),
        direct: num(d.aggregate_mib_s.median, 0),
        sshgw: num(g.aggregate_mib_s.median, 0),
        comparison: format!(
            "{}×, sshgw core {}% busy",
            num(g.ratio_to_direct, 2),
            num(100.0 * g.sshgw_core_busy.unwrap_or(f64::NAN), 0)
        ),
        target: "",
        ok: None,
    }]
}

/// Details of the many-connections figure.
pub fn parallel_markdown(p: &ParallelFigure, md: &mut String) {
    let _ = writeln!(
        md,
        "\n**Many connections, pinned** ({} uploads of {} at once, {} rounds; aggregate MiB/s median [min–max], server clock, first start to last end)\n",
        p.connections,
        size(p.bytes_each),
        p.rounds
    );
    md.push_str("| Route | Aggregate MiB/s | vs direct | sshgw CPU (s/GiB) | sshgw core busy |\n");
    md.push_str("|---|---:|---:|---:|---:|\n");
    for s in &p.summary {
        let _ = writeln!(
            md,
            "| {} | {} [{}–{}] | {}× | {} | {} |",
            s.route.label(),
            num(s.aggregate_mib_s.median, 0),
            num(s.aggregate_mib_s.min, 0),
            num(s.aggregate_mib_s.max, 0),
            num(s.ratio_to_direct, 2),
            s.sshgw_cpu_s_per_gib.map_or("–".to_owned(), |v| num(v, 2)),
            s.sshgw_core_busy
                .map_or("–".to_owned(), |v| format!("{}%", num(100.0 * v, 0))),
        );
    }
}
