//! `/proc` readers, resource usage, limits and precisely timed child processes.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::wait::poll_until;

/// CPU time of one process from `/proc/PID/stat`, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// utime + stime of the process (all its threads).
    pub own: f64,
    /// cutime + cstime: children it has waited for (and their waited-for descendants).
    pub children: f64,
}

impl CpuTimes {
    pub fn total(&self) -> f64 {
        self.own + self.children
    }
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of `/proc/PID/stat` times.
#[allow(unsafe_code)] // reason: sysconf(3) through libc
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Fields 14-17 (utime, stime, cutime, cstime) of `/proc/PID/stat`.
pub fn cpu_times(pid: u32) -> Result<CpuTimes> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat_times(&text, clock_ticks())
        .with_context(|| format!("unexpected /proc/{pid}/stat: {text:?}"))
}

fn parse_stat_times(stat: &str, ticks: f64) -> Option<CpuTimes> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let get = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(CpuTimes {
        own: (get(14)? + get(15)?) as f64 / ticks,
        children: (get(16)? + get(17)?) as f64 / ticks,
    })
}

/// `VmRSS` of a process in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status_kib(&text, "VmRSS:")
        .map(|kib| kib * 1024)
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Number of open file descriptors of a process.
pub fn fd_count(pid: u32) -> Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}

/// Number of threads of a process.
pub fn thread_count(pid: u32) -> Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing /proc/{pid}/task"))?
        .count())
}

/// Direct children of a process (zombies included), from `/proc/PID/task/*/children`.
pub fn children(pid: u32) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing /proc/{pid}/task"))?
    {
        let path = task?.path().join("children");
        // A thread that exits between the listing and the read is not an error.
        if let Ok(text) = fs::read_to_string(&path) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    Ok(out)
}

/// Waits (bounded) until `pid` has no children left, i.e. every session process it forked
/// has exited and been reaped (so its CPU time is in the parent's cutime/cstime).
pub fn wait_no_children(pid: u32, timeout: Duration) -> Result<()> {
    poll_until(
        &format!("pid {pid} to reap all its children"),
        timeout,
        Duration::from_millis(5),
        || Ok(children(pid)?.is_empty().then_some(())),
    )
}

/// CPU seconds (user + system) of every child of this process that has been waited for.
#[allow(unsafe_code)] // reason: getrusage(2) through libc
pub fn reaped_children_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises this process's soft `RLIMIT_NOFILE` to the hard limit (children inherit it: the
/// daemon, sshd, ssh). Returns the new soft limit.
#[allow(unsafe_code)] // reason: getrlimit/setrlimit(2) through libc
pub fn raise_nofile_limit() -> Result<u64> {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(lim.rlim_cur)
}

/// Spawns `cmd` outside the lab registry, for runs that are timed to the microsecond (the
/// registry polls for exits). The child gets `PR_SET_PDEATHSIG(SIGKILL)` like registry
/// children; always finish it with [`wait_child`].
#[allow(unsafe_code)] // reason: pre_exec with prctl(PR_SET_PDEATHSIG) in the child
pub fn spawn_timed(cmd: &mut Command) -> Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("spawning {cmd:?}"))
}

/// Waits up to `timeout` for `child` to exit and returns the moment it did (a pidfd wakes
/// us at once, no polling), or None if it is still running (it is left running).
#[allow(unsafe_code)] // reason: pidfd_open(2) through libc::syscall
pub fn try_wait_child(
    child: &mut Child,
    timeout: Duration,
) -> Result<Option<(ExitStatus, Instant)>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd (or -1).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if fd < 0 {
        // No pidfd (old kernel): fall back to a blocking wait.
        let status = child.wait().context("waiting for a child")?;
        return Ok(Some((status, Instant::now())));
    }
    let fd = fd as libc::c_int;
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    let exited_at = Instant::now();
    // SAFETY: we own the pidfd.
    unsafe { libc::close(fd) };
    if ready <= 0 {
        return Ok(None);
    }
    let status = child.wait().context("reaping a child")?;
    Ok(Some((status, exited_at)))
}

/// [`try_wait_child`] that SIGKILLs and reaps the child on timeout and returns an error.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Result<(ExitStatus, Instant)> {
    match try_wait_child(child, timeout)? {
        Some(done) => Ok(done),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("pid {} did not exit within {timeout:?}", child.id());
        }
    }
}

/// What the report says about the machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub openssh: String,
    pub hostname: String,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gib =
            status_kib(&meminfo, "MemTotal:").map_or(f64::NAN, |k| k as f64 / 1024.0 / 1024.0);
        let read_trim = |p: &str| {
            fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let openssh = Command::new("ssh")
            .arg("-V")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default();
        Self {
            cpu_model,
            cores,
            memory_gib,
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            openssh,
            hostname: read_trim("/proc/sys/kernel/hostname"),
        }
    }

    /// One line: `AMD EPYC, 2 cores, 23.4 GiB, Linux 6.18.44`.
    pub fn summary(&self) -> String {
        format!(
            "{}, {} cores, {:.1} GiB RAM, Linux {}, {}",
            self.cpu_model, self.cores, self.memory_gib, self.kernel, self.openssh
        )
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The git commit of the workspace (with `-dirty` when the tree has changes), if any.
pub fn git_commit(workspace: &std::path::Path) -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(workspace)
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

/// Sums the CPU seconds printed by the shell builtin `times` (`0m0.004s 0m0.120s` lines:
/// user and system time of the shell, then of its children).
pub fn parse_shell_times(text: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() != 2 {
                return None;
            }
            let a = parse_min_sec(parts[0])?;
            let b = parse_min_sec(parts[1])?;
            Some(a + b)
        })
        .sum()
}

fn parse_min_sec(s: &str) -> Option<f64> {
    let (m, rest) = s.split_once('m')?;
    let secs = rest.strip_suffix('s')?;
    Some(m.parse::<f64>().ok()? * 60.0 + secs.parse::<f64>().ok()?)
}
