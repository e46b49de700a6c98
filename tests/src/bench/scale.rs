//! (h) Scale: thousands of interactive idle sessions through one sshgw, held by the russh
//! load client and server ([`crate::load`]) instead of OpenSSH (whose process per session
//! the concurrency figure, (d), keeps as the reference at 2,000).
//!
//! The lab ([`EnvOptions::load_server`]) gives the load server its own address,
//! [`SRV_LOAD_V4`], port 22, covered by the policy `bench-scale` (audit, no recording). The
//! server runs in `srv` and trusts sshgw's user CA; the client runs in `dev` and connects to
//! that address, which sshgw intercepts. Both are this binary (`load-server`, `load-client`),
//! driven over JSON lines.
//!
//! sshgw runs under the shipped unit's open-file limit: `LimitNOFILE=` of
//! `systemd/sshgw.service`, or the host's hard limit where that is lower (a process without
//! `CAP_SYS_RESOURCE` cannot raise it). The figure reads the limit back from
//! `/proc/PID/limits`. Before each level it computes how many sessions the limits allow:
//! sshgw's free descriptors (minus [`FD_HEADROOM`]) over its descriptors per session (as
//! measured; 3 before the first level: the device's socket, the server's socket, and the
//! duplicate of the device's socket the relay holds until login), the same for the client
//! and the server (1 per session), and the
//! ephemeral ports of `dev` and `rtr` (each leg is one source address to one destination).
//! A level beyond that is cut to it and the ramp stops there, with `limited_by` saying which
//! limit it was, instead of running sshgw out of descriptors.
//!
//! Per level: the ramp step (setup rate = sessions opened / step time), 2 s to settle (the
//! CPU time sshgw, the client and the server spend in it is their idle CPU with every
//! session open), then sshgw's `VmRSS` and open descriptors, the client's and the server's
//! RSS, and a series of keystroke round trips. "Per session" is the growth over the baseline (read after one
//! warm-up session has come and gone) divided by the sessions open.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::ChildStdin;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::env::{BenchEnv, EnvOptions, SRV_LOAD_V4};
use super::floor::SummaryRow;
use super::report::FigureError;
use super::stats::{Series, num, ratio};
use super::{Figure, Options, sys};
use crate::load::protocol::{Command, Event, KeystrokeReport, RampReport};
use crate::netns::Netns;
use crate::process::Proc;

/// The shipped unit, relative to the workspace.
pub const UNIT_FILE: &str = "systemd/sshgw.service";
/// Descriptors of each process kept free for what is not a session (log and database
/// files, control connections, sessions still closing).
pub const FD_HEADROOM: usize = 256;
/// Targets (issue 19): sessions up, sshgw RSS per session, keystroke p99 at the largest
/// level over its value at [`REFERENCE_SESSIONS`].
pub const TARGET_SESSIONS: usize = 10_000;
pub const TARGET_RSS_PER_SESSION_KIB: f64 = 48.0;
pub const TARGET_P99_RATIO: f64 = 2.0;
pub const REFERENCE_SESSIONS: usize = 1_000;
/// sshgw's descriptors per session until measured (the device's socket, the duplicate the
/// relay keeps to close it, the server's socket), and the load processes'.
const GATEWAY_FDS_PER_SESSION: f64 = 3.0;
const LOAD_FDS_PER_SESSION: f64 = 1.0;
/// Time for buffers and allocator caches to settle after a ramp step.
const SETTLE: Duration = Duration::from_secs(2);
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);
const WARMUP_TIMEOUT: Duration = Duration::from_secs(90);

/// The open-file limits the figure runs under.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NofileLimits {
    /// `LimitNOFILE=` of the shipped unit.
    pub shipped: u64,
    /// This process's hard `RLIMIT_NOFILE` (the host's: without `CAP_SYS_RESOURCE` nothing
    /// here can go above it).
    pub host_hard: u64,
    /// What sshgw is started with: the smaller of the two.
    pub daemon: u64,
}

impl NofileLimits {
    pub fn probe(workspace: &Path) -> Result<Self> {
        let unit = workspace.join(UNIT_FILE);
        let text = std::fs::read_to_string(&unit)
            .with_context(|| format!("reading {}", unit.display()))?;
        let shipped = parse_limit_nofile(&text).with_context(|| unit.display().to_string())?;
        let (_, host_hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .context("getrlimit(RLIMIT_NOFILE)")?;
        Ok(Self {
            shipped,
            host_hard,
            daemon: shipped.min(host_hard),
        })
    }
}

/// The hard limit a unit's `LimitNOFILE=` sets (`N`, `SOFT:HARD` or `infinity`; the last
/// assignment wins, as in systemd).
pub fn parse_limit_nofile(unit: &str) -> Result<u64> {
    let value = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .next_back()
        .context("the unit sets no LimitNOFILE=")?
        .trim();
    let hard = value.rsplit(':').next().unwrap_or(value);
    if hard == "infinity" {
        return Ok(u64::MAX);
    }
    hard.parse()
        .with_context(|| format!("LimitNOFILE={value} is not a number of files"))
}

/// How many sessions a process can hold: `open` now, plus its free descriptors (`limit`
/// minus `headroom` minus `fds_now`) at `per_session` each.
pub fn fd_bound(
    limit: u64,
    headroom: usize,
    fds_now: usize,
    open: usize,
    per_session: f64,
) -> usize {
    let free = limit as f64 - headroom as f64 - fds_now as f64;
    if free <= 0.0 || per_session <= 0.0 {
        return open;
    }
    open + (free / per_session).floor() as usize
}

/// One limit on the sessions open at once.
#[derive(Debug, Clone)]
pub struct Bound {
    pub sessions: usize,
    pub what: String,
}

/// The tightest of `bounds`.
pub fn tightest(bounds: Vec<Bound>) -> Option<Bound> {
    bounds.into_iter().min_by_key(|b| b.sessions)
}

/// RSS and open descriptors of one process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub rss_mib: f64,
    pub fds: usize,
}

impl Point {
    fn read(pid: u32) -> Result<Self> {
        Ok(Self {
            rss_mib: sys::rss_bytes(pid)? as f64 / 1024.0 / 1024.0,
            fds: sys::fd_count(pid)?,
        })
    }

    fn kib_per_session(&self, base: &Point, sessions: usize) -> f64 {
        ratio((self.rss_mib - base.rss_mib) * 1024.0, sessions as f64)
    }

    fn fds_per_session(&self, base: &Point, sessions: usize) -> f64 {
        ratio(self.fds as f64 - base.fds as f64, sessions as f64)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleLevel {
    /// The level asked for (`sessions` is smaller when a limit cut it).
    pub planned: usize,
    pub sessions: usize,
    pub rss_mib: f64,
    pub fds: usize,
    pub rss_per_session_kib: f64,
    pub fds_per_session: f64,
    /// Sessions this step opened over the step's time.
    pub setup_per_s: f64,
    pub step_seconds: f64,
    /// Connect-to-marker time of the sessions this step opened.
    pub setup_ms: Series,
    pub keystroke_ms: Series,
    pub keystroke_errors: Vec<String>,
    /// Growth of the load client's and server's RSS over their baseline, per session.
    pub client_kib_per_session: f64,
    pub server_kib_per_session: f64,
    /// CPU time over the settle pause (all sessions idle) per second of it, in %: sshgw,
    /// the load client and the load server.
    pub idle_cpu_percent: [f64; 3],
    /// Sessions that failed to come up in this step (retried).
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleTarget {
    pub sessions: usize,
    pub rss_per_session_kib: f64,
    pub p99_ratio: f64,
    pub reference_sessions: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleFigure {
    pub planned: Vec<usize>,
    /// Handshakes in flight during a ramp.
    pub window: usize,
    /// Keystrokes timed per level.
    pub keystrokes: usize,
    /// sshgw's `RLIMIT_NOFILE` as read from `/proc/PID/limits`.
    pub nofile_limit: u64,
    pub shipped_nofile: u64,
    pub host_hard_nofile: u64,
    /// The load client's and server's `RLIMIT_NOFILE`.
    pub load_nofile: u64,
    pub fd_headroom: usize,
    /// Ephemeral ports of the device and of the router (the smaller).
    pub ephemeral_ports: usize,
    /// sshgw, the client and the server after the warm-up session closed.
    pub baseline: Point,
    pub client_baseline: Point,
    pub server_baseline: Point,
    pub warmup_setup_ms: f64,
    pub warmup_keystroke_ms: f64,
    pub levels: Vec<ScaleLevel>,
    /// Which limit cut the ramp short, if one did.
    pub limited_by: Option<String>,
    /// Why the ramp stopped early otherwise (sessions failed).
    pub error: Option<String>,
    /// Keystroke p99 at the largest level over that at the reference level (1,000, or the
    /// smallest level in a quick run), and those two session counts.
    pub p99_ratio: f64,
    pub p99_ratio_of: (usize, usize),
    pub target: ScaleTarget,
}

impl ScaleFigure {
    /// The largest level measured.
    pub fn top(&self) -> Option<&ScaleLevel> {
        self.levels.last()
    }

    /// The level the p99 ratio compares against.
    pub fn reference(&self) -> Option<&ScaleLevel> {
        self.levels
            .iter()
            .find(|l| l.planned == REFERENCE_SESSIONS)
            .or(self.levels.first())
    }

    fn set_p99_ratio(&mut self) {
        if let (Some(r), Some(t)) = (self.reference(), self.top()) {
            let (rs, ts) = (r.sessions, t.sessions);
            self.p99_ratio = ratio(t.keystroke_ms.p99, r.keystroke_ms.p99);
            self.p99_ratio_of = (ts, rs);
        }
    }
}

/// Runs the figure in a lab of its own (from [`super::run`]); a failure is recorded in
/// `errors`.
pub fn figure(
    opts: &Options,
    plain: &EnvOptions,
    errors: &mut Vec<FigureError>,
    log: &dyn Fn(&str),
) -> Option<ScaleFigure> {
    let limits = match NofileLimits::probe(&opts.workspace) {
        Ok(l) => l,
        Err(err) => {
            errors.push(FigureError {
                figure: Figure::Scale,
                error: format!("{err:#}"),
            });
            return None;
        }
    };
    let env_opts = EnvOptions {
        load_server: true,
        nofile: Some(limits.daemon),
        ..plain.clone()
    };
    let s = &opts.sizes;
    let plan = Plan {
        levels: &s.scale_levels,
        window: s.scale_window,
        keystrokes: s.scale_keystrokes,
    };
    let fig = super::in_lab(Figure::Scale, &env_opts, errors, |env| {
        run(env, &opts.exe, plan, limits, log)
    })?;
    if let Some(error) = &fig.error {
        errors.push(FigureError {
            figure: Figure::Scale,
            error: format!(
                "stopped at {} sessions: {error}",
                fig.top().map_or(0, |l| l.sessions)
            ),
        });
    }
    Some(fig)
}

/// A load process in a lab namespace, driven over JSON lines.
struct Agent {
    name: &'static str,
    proc: Proc,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Agent {
    fn spawn(
        env: &BenchEnv<'_>,
        ns: &Netns,
        exe: &Path,
        name: &'static str,
        args: &[String],
    ) -> Result<Self> {
        let mut cmd = ns.exec_command(exe);
        cmd.args(args);
        let (proc, stdin, stdout) = env.lab.procs().spawn_piped(name, &mut cmd)?;
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .with_context(|| format!("spawning the thread that reads {name}"))?;
        Ok(Self {
            name,
            proc,
            stdin: Some(stdin),
            lines,
        })
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn send(&mut self, cmd: &Command) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("standard input already closed")?;
        let line = serde_json::to_string(cmd)?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("sending {line} to {}", self.name))
    }

    fn recv(&self, timeout: Duration) -> Result<Event> {
        let line = match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "{} reported nothing within {timeout:?}; its standard error ends:\n{}",
                self.name,
                self.stderr_tail()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                "{} exited; its standard error ends:\n{}",
                self.name,
                self.stderr_tail()
            ),
        };
        serde_json::from_str(&line).with_context(|| format!("{} printed {line:?}", self.name))
    }

    fn stderr_tail(&self) -> String {
        let text = self.proc.stderr_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Closes standard input (the process exits) and kills it if it is still there.
    fn finish(mut self) {
        self.stdin.take();
        let _ = self.proc.wait_exit(Duration::from_secs(10));
        let _ = self.proc.kill();
    }
}

/// The soft `RLIMIT_NOFILE` of a process (`Max open files` in `/proc/PID/limits`).
fn nofile_of(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .with_context(|| format!("reading /proc/{pid}/limits"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .with_context(|| format!("no open-file limit in /proc/{pid}/limits"))?;
    let soft = line.split_whitespace().nth(3).unwrap_or_default();
    if soft == "unlimited" {
        return Ok(u64::MAX);
    }
    soft.parse()
        .with_context(|| format!("unexpected line in /proc/{pid}/limits: {line:?}"))
}

/// Ports in `net.ipv4.ip_local_port_range` of a namespace.
fn ephemeral_ports(ns: &Netns) -> Result<usize> {
    let range = ns.sysctl_get("net.ipv4.ip_local_port_range")?;
    let mut it = range.split_whitespace().map(str::parse::<usize>);
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if hi >= lo => Ok(hi - lo + 1),
        _ => bail!("unexpected ip_local_port_range {range:?} in {}", ns.name()),
    }
}

/// The three processes the figure watches, and their baselines.
struct Watched {
    gateway: u32,
    client: u32,
    server: u32,
    base: Point,
    client_base: Point,
    server_base: Point,
}

/// Everything that does not change from level to level.
struct Fixed {
    gateway_nofile: u64,
    load_nofile: u64,
    ports: usize,
    limits: NofileLimits,
}

/// The session counts each limit allows, given what is open now.
fn bounds(w: &Watched, fixed: &Fixed, open: usize) -> Result<Vec<Bound>> {
    let per = |now: &Point, base: &Point, assumed: f64| {
        let measured = now.fds_per_session(base, open);
        if open > 0 && measured >= 0.5 {
            measured
        } else {
            assumed
        }
    };
    let (g, c, s) = (
        Point::read(w.gateway)?,
        Point::read(w.client)?,
        Point::read(w.server)?,
    );
    let g_per = per(&g, &w.base, GATEWAY_FDS_PER_SESSION);
    let l = &fixed.limits;
    Ok(vec![
        Bound {
            sessions: fd_bound(fixed.gateway_nofile, FD_HEADROOM, g.fds, open, g_per),
            what: format!(
                "sshgw's open-file limit: RLIMIT_NOFILE {} (the unit's LimitNOFILE={}, capped by \
                 the host's hard limit {}), {} descriptors per session, {FD_HEADROOM} kept free",
                fixed.gateway_nofile,
                l.shipped,
                l.host_hard,
                num(g_per, 2)
            ),
        },
        Bound {
            sessions: fd_bound(
                fixed.load_nofile,
                FD_HEADROOM,
                c.fds,
                open,
                per(&c, &w.client_base, LOAD_FDS_PER_SESSION),
            ),
            what: format!("the load client's open-file limit ({})", fixed.load_nofile),
        },
        Bound {
            sessions: fd_bound(
                fixed.load_nofile,
                FD_HEADROOM,
                s.fds,
                open,
                per(&s, &w.server_base, LOAD_FDS_PER_SESSION),
            ),
            what: format!("the load server's open-file limit ({})", fixed.load_nofile),
        },
        Bound {
            sessions: fixed.ports,
            what: format!(
                "{} ephemeral ports per leg (one source address to one destination)",
                fixed.ports
            ),
        },
    ])
}

fn spawn_server(env: &BenchEnv<'_>, exe: &Path) -> Result<Agent> {
    let ca = env.lab.sshgw_ca()?.user_ca_file.clone();
    let args = [
        "load-server".to_owned(),
        "--listen".to_owned(),
        format!("{SRV_LOAD_V4}:22"),
        "--user-ca".to_owned(),
        ca.display().to_string(),
    ];
    let server = Agent::spawn(env, &env.lab.srv, exe, "load-server", &args)?;
    match server.recv(LISTEN_TIMEOUT)? {
        Event::Listening { .. } => Ok(server),
        other => bail!("the load server answered {other:?} instead of listening"),
    }
}

fn spawn_client(env: &BenchEnv<'_>, exe: &Path, window: usize) -> Result<Agent> {
    let args = [
        "load-client".to_owned(),
        "--connect".to_owned(),
        format!("{SRV_LOAD_V4}:22"),
        "--user".to_owned(),
        crate::sshd::LAB_PRINCIPAL.to_owned(),
        "--window".to_owned(),
        window.to_string(),
    ];
    Agent::spawn(env, &env.lab.dev, exe, "load-client", &args)
}

/// One warm-up session (sshgw pins the server's host key), gone before the baseline.
fn warm_up(env: &BenchEnv<'_>, client: &mut Agent) -> Result<(f64, f64)> {
    let closed = env.sessions_closed();
    client.send(&Command::Warmup)?;
    let Event::WarmedUp {
        setup_ms,
        keystroke_ms,
    } = client.recv(WARMUP_TIMEOUT)?
    else {
        bail!("the load client did not answer the warm-up");
    };
    env.wait_sessions_closed(closed + 1, Duration::from_secs(30))?;
    Ok((setup_ms, keystroke_ms))
}

fn ramp_to(client: &mut Agent, open: usize, to: usize) -> Result<RampReport> {
    client.send(&Command::Ramp { to })?;
    let timeout = Duration::from_secs(120) + Duration::from_millis(100) * (to - open) as u32;
    match client.recv(timeout)? {
        Event::Ramped(r) => Ok(r),
        other => bail!("the load client answered {other:?} to a ramp"),
    }
}

fn keystrokes(client: &mut Agent, count: usize) -> Result<KeystrokeReport> {
    client.send(&Command::Keystrokes { count })?;
    let timeout = Duration::from_secs(60) + Duration::from_millis(100) * count as u32;
    match client.recv(timeout)? {
        Event::Keystrokes(k) => Ok(k),
        other => bail!("the load client answered {other:?} to keystrokes"),
    }
}

/// Waits [`SETTLE`] and returns what sshgw, the client and the server spent of it on the
/// CPU, in % of one core.
fn idle_cpu(w: &Watched) -> Result<[f64; 3]> {
    let pids = [w.gateway, w.client, w.server];
    let read =
        || -> Result<Vec<f64>> { pids.iter().map(|&p| Ok(sys::cpu_times(p)?.own)).collect() };
    let before = read()?;
    std::thread::sleep(SETTLE);
    let after = read()?;
    let pct = |i: usize| (after[i] - before[i]) / SETTLE.as_secs_f64() * 100.0;
    Ok([pct(0), pct(1), pct(2)])
}

/// Reads everything of one level once its ramp step is done.
fn measure_level(
    w: &Watched,
    client: &mut Agent,
    planned: usize,
    step: RampReport,
    count: usize,
) -> Result<ScaleLevel> {
    let idle_cpu_percent = idle_cpu(w)?;
    let n = step.open;
    let g = Point::read(w.gateway)?;
    let (c, s) = (Point::read(w.client)?, Point::read(w.server)?);
    let keys = keystrokes(client, count)?;
    Ok(ScaleLevel {
        planned,
        sessions: n,
        rss_mib: g.rss_mib,
        fds: g.fds,
        rss_per_session_kib: g.kib_per_session(&w.base, n),
        fds_per_session: g.fds_per_session(&w.base, n),
        setup_per_s: ratio(step.opened as f64, step.seconds),
        step_seconds: step.seconds,
        setup_ms: Series::new("ms", step.setup_ms),
        keystroke_ms: Series::new("ms", keys.ms),
        keystroke_errors: keys.errors,
        client_kib_per_session: c.kib_per_session(&w.client_base, n),
        server_kib_per_session: s.kib_per_session(&w.server_base, n),
        idle_cpu_percent,
        failures: step.failures,
    })
}

/// What to measure: the session counts, handshakes in flight, keystrokes per level.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    pub levels: &'a [usize],
    pub window: usize,
    pub keystrokes: usize,
}

/// Measures the figure in `env` (a lab with [`EnvOptions::load_server`]): starts the load
/// server and client from `exe`, ramps through `plan` and stops both.
pub fn run(
    env: &BenchEnv<'_>,
    exe: &Path,
    plan: Plan<'_>,
    limits: NofileLimits,
    log: &dyn Fn(&str),
) -> Result<ScaleFigure> {
    let server = spawn_server(env, exe)?;
    let mut client = spawn_client(env, exe, plan.window)?;
    let outcome = drive(env, &server, &mut client, plan, limits, log);
    client.finish();
    server.finish();
    outcome
}

fn drive(
    env: &BenchEnv<'_>,
    server: &Agent,
    client: &mut Agent,
    plan: Plan<'_>,
    limits: NofileLimits,
    log: &dyn Fn(&str),
) -> Result<ScaleFigure> {
    let warm = warm_up(env, client)?;
    let (w, fixed) = watch(env, server, client, limits)?;
    log(&format!(
        "scale: sshgw RLIMIT_NOFILE {} (unit {}, host hard {}); baseline RSS {} MiB, {} fds",
        fixed.gateway_nofile,
        limits.shipped,
        limits.host_hard,
        num(w.base.rss_mib, 1),
        w.base.fds
    ));
    let mut fig = ScaleFigure::start(plan, &w, &fixed, warm);
    ramp_levels(env, client, &w, &fixed, plan, &mut fig, log)?;
    fig.set_p99_ratio();
    Ok(fig)
}

/// The processes to watch, their baselines, and the limits that do not change.
fn watch(
    env: &BenchEnv<'_>,
    server: &Agent,
    client: &Agent,
    limits: NofileLimits,
) -> Result<(Watched, Fixed)> {
    let gateway = env.sshgw_pid()?;
    let w = Watched {
        gateway,
        client: client.pid(),
        server: server.pid(),
        base: Point::read(gateway)?,
        client_base: Point::read(client.pid())?,
        server_base: Point::read(server.pid())?,
    };
    let fixed = Fixed {
        gateway_nofile: nofile_of(gateway)?,
        load_nofile: nofile_of(client.pid())?.min(nofile_of(server.pid())?),
        ports: ephemeral_ports(&env.lab.dev)?.min(ephemeral_ports(&env.lab.rtr)?),
        limits,
    };
    Ok((w, fixed))
}

impl ScaleFigure {
    /// The figure before any level, with the warm-up's (setup, keystroke) times.
    fn start(plan: Plan<'_>, w: &Watched, fixed: &Fixed, warm: (f64, f64)) -> Self {
        Self {
            planned: plan.levels.to_vec(),
            window: plan.window,
            keystrokes: plan.keystrokes,
            nofile_limit: fixed.gateway_nofile,
            shipped_nofile: fixed.limits.shipped,
            host_hard_nofile: fixed.limits.host_hard,
            load_nofile: fixed.load_nofile,
            fd_headroom: FD_HEADROOM,
            ephemeral_ports: fixed.ports,
            baseline: w.base,
            client_baseline: w.client_base,
            server_baseline: w.server_base,
            warmup_setup_ms: warm.0,
            warmup_keystroke_ms: warm.1,
            levels: Vec::new(),
            limited_by: None,
            error: None,
            p99_ratio: f64::NAN,
            p99_ratio_of: (0, 0),
            target: ScaleTarget {
                sessions: TARGET_SESSIONS,
                rss_per_session_kib: TARGET_RSS_PER_SESSION_KIB,
                p99_ratio: TARGET_P99_RATIO,
                reference_sessions: REFERENCE_SESSIONS,
            },
        }
    }
}

/// Ramps level by level, each cut to what the limits allow; stops after a level that was
/// cut or whose step failed.
fn ramp_levels(
    env: &BenchEnv<'_>,
    client: &mut Agent,
    w: &Watched,
    fixed: &Fixed,
    plan: Plan<'_>,
    fig: &mut ScaleFigure,
    log: &dyn Fn(&str),
) -> Result<()> {
    let mut open = 0;
    for &level in plan.levels {
        let bound = tightest(bounds(w, fixed, open)?).context("no bounds")?;
        let to = level.min(bound.sessions);
        if to < level {
            let why = format!(
                "{} allows at most {} sessions; the ramp stopped there instead of at {level}",
                bound.what, bound.sessions
            );
            log(&format!("scale: {why}"));
            fig.limited_by = Some(why);
        }
        if to <= open {
            break;
        }
        let step = ramp_to(client, open, to)?;
        let error = step.error.clone();
        open = step.open;
        let l = measure_level(w, client, level, step, plan.keystrokes)?;
        log(&level_line(&l));
        fig.levels.push(l);
        if let Some(error) = error {
            fig.error = Some(format!("{error}\n{}", env.diagnostics()));
            break;
        }
        if to < level {
            break;
        }
    }
    Ok(())
}

fn level_line(l: &ScaleLevel) -> String {
    format!(
        "scale: {} sessions, {} /s; sshgw RSS {} MiB ({} KiB per session), {} fds, idle CPU {}%; keystroke median {} ms, p99 {} ms",
        l.sessions,
        num(l.setup_per_s, 1),
        num(l.rss_mib, 1),
        num(l.rss_per_session_kib, 1),
        l.fds,
        num(l.idle_cpu_percent[0], 1),
        num(l.keystroke_ms.median, 3),
        num(l.keystroke_ms.p99, 3)
    )
}

/// The summary rows (see `report.rs`).
pub fn rows(f: &ScaleFigure) -> Vec<SummaryRow> {
    let Some(top) = f.top() else {
        return Vec::new();
    };
    let n = top.sessions;
    vec![
        SummaryRow {
            figure: "h) idle sessions through one sshgw (russh load client and server)".to_owned(),
            direct: String::new(),
            sshgw: n.to_string(),
            comparison: format!(
                "RLIMIT_NOFILE {} (unit {}, host hard limit {})",
                f.nofile_limit, f.shipped_nofile, f.host_hard_nofile
            ),
            target: "10,000 up",
            ok: Some(n >= TARGET_SESSIONS),
        },
        SummaryRow {
            figure: format!("h) sshgw RSS per session at {n} (KiB)"),
            direct: String::new(),
            sshgw: num(top.rss_per_session_kib, 1),
            comparison: format!("{} fds per session", num(top.fds_per_session, 2)),
            target: "≤ 48 KiB",
            ok: Some(top.rss_per_session_kib <= TARGET_RSS_PER_SESSION_KIB),
        },
        SummaryRow {
            figure: format!(
                "h) keystroke p99 at {} vs {} sessions (ms)",
                f.p99_ratio_of.0, f.p99_ratio_of.1
            ),
            direct: String::new(),
            sshgw: format!(
                "{} → {}",
                num(f.reference().map_or(f64::NAN, |r| r.keystroke_ms.p99), 3),
                num(top.keystroke_ms.p99, 3)
            ),
            comparison: format!("{}×", num(f.p99_ratio, 2)),
            target: "≤ 2× (10,000 vs 1,000)",
            ok: Some(f.p99_ratio <= TARGET_P99_RATIO),
        },
        SummaryRow {
            figure: format!(
                "h) session setup rate, last step to {n}, {} in flight (sessions/s)",
                f.window
            ),
            direct: String::new(),
            sshgw: num(top.setup_per_s, 1),
            comparison: String::new(),
            target: "",
            ok: None,
        },
    ]
}

/// The details table.
pub fn markdown(f: &ScaleFigure, md: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        md,
        "\n**Scale** (russh load client and server, pty + echo sessions through one sshgw, {} handshakes in flight, {} keystrokes per level)\n",
        f.window, f.keystrokes
    );
    let _ = writeln!(
        md,
        "sshgw ran with RLIMIT_NOFILE {}: the shipped unit's LimitNOFILE={}, capped by the host's hard limit {}. \
         The load client and server had {} each; {} descriptors were kept free in each process; {} ephemeral ports per leg. \
         Baseline after one warm-up session: sshgw RSS {} MiB, {} fds.\n",
        f.nofile_limit,
        f.shipped_nofile,
        f.host_hard_nofile,
        f.load_nofile,
        f.fd_headroom,
        f.ephemeral_ports,
        num(f.baseline.rss_mib, 1),
        f.baseline.fds
    );
    md.push_str("| Sessions | sshgw RSS (MiB) | KiB per session | fds | fds per session | Setup (sessions/s) | Setup median / p99 (ms) | Keystroke median / p99 (ms) | Client / server KiB per session | Idle CPU % sshgw / client / server |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for l in &f.levels {
        let _ = writeln!(
            md,
            "| {}{} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {} / {} / {} |",
            l.sessions,
            if l.sessions < l.planned {
                format!(" (of {})", l.planned)
            } else {
                String::new()
            },
            num(l.rss_mib, 1),
            num(l.rss_per_session_kib, 1),
            l.fds,
            num(l.fds_per_session, 2),
            num(l.setup_per_s, 1),
            num(l.setup_ms.median, 0),
            num(l.setup_ms.p99, 0),
            num(l.keystroke_ms.median, 3),
            num(l.keystroke_ms.p99, 3),
            num(l.client_kib_per_session, 1),
            num(l.server_kib_per_session, 1),
            num(l.idle_cpu_percent[0], 1),
            num(l.idle_cpu_percent[1], 1),
            num(l.idle_cpu_percent[2], 1)
        );
    }
    let _ = writeln!(
        md,
        "\nKeystroke p99 at {} sessions over that at {}: {}× (target ≤ {}× at 10,000 vs 1,000).",
        f.p99_ratio_of.0,
        f.p99_ratio_of.1,
        num(f.p99_ratio, 2),
        TARGET_P99_RATIO
    );
    if let Some(why) = &f.limited_by {
        let _ = writeln!(md, "\nLimited by {why}.");
    }
    if let Some(error) = &f.error {
        let _ = writeln!(md, "\n**Stopped early:** {}", error.replace('\n', " "));
    }
    let failures: Vec<&String> = f
        .levels
        .iter()
        .flat_map(|l| l.failures.iter().chain(&l.keystroke_errors))
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(
            md,
            "\n{} failed sessions or keystrokes; the first 5:\n",
            failures.len()
        );
        for line in failures.iter().take(5) {
            let _ = writeln!(md, "- {}", line.replace('\n', " "));
        }
    }
}
