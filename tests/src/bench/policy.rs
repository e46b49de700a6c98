//! (i) Policy decision time and push time against the size of the device table and of the
//! policy set.
//!
//! **Tables.** A device table of N entries is the lab's device (`laptop-jdoe`, 100.96.0.7)
//! and N − 1 synthetic ones with consecutive addresses from 100.64.0.1 in CGNAT space
//! (100.64.0.0/10, below the lab's 100.96.0.0/24): two devices (a laptop and a phone) per
//! user `userNNNNNN@example.com`, each user in a team group, one in ten a contractor. A
//! policy set of N entries is N − 1 synthetic policies and the lab's `bench-audit` (the
//! lab's server 203.0.113.10, group `developers`) last in precedence. Every synthetic
//! policy lists the audited server's network, at one of nine prefix lengths (/24 to /32),
//! plus a /29 of its own in 198.18.0.0/15, port 22, and an identity that is not the lab
//! user's (other users' emails, team groups, partner domains). So the daemon's destination
//! index returns every policy as a candidate for the lab's connections, and each is
//! checked (port, emails, domain, groups) and rejected before `bench-audit` decides: the
//! worst position for the matching policy.
//!
//! **Decision time** is measured in the daemon: `sshgw_admission_decision_seconds` times
//! the judgement of each intercepted connection (device lookup and policy evaluation, not
//! the logging). A sample pushes both tables, then opens M plain TCP connections one after
//! another from the device to 203.0.113.10:22 (`sshgw-bench tcp-connect`: connect, read
//! sshgw's SSH banner, reset), in K chunks. After each chunk the growth of the histogram's
//! sum over the growth of its count is that chunk's mean; the sample's figure is the
//! median of its chunk means (a decision preempted by other work on the machine costs
//! milliseconds and would move a plain mean), with the mean over all M beside it. The
//! baseline, 10 devices and 10 policies, is measured before the first size and after
//! every size (baseline, size, baseline, size, …); each size is reported against the mean
//! of the two baselines beside it.
//!
//! **Push time** is the wall time of `PUT /v1/devices` or `PUT /v1/policies` on the
//! control socket, replacing the baseline table (the other table stays at its baseline);
//! the floor is a `GET` of the same table on the same socket right after. The body pushed
//! is the daemon's own form of the generated table (pushed once and read back first), so
//! a push and its read-back carry the same bytes. The baseline table is put back between
//! rounds, untimed. A table the daemon refuses is reported with its answer, and its sizes
//! get no decision sample.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Sizes;
use super::env::{BenchEnv, Route};
use super::stats::{Series, median, ratio};
use crate::wait::poll_until;

/// The baseline: (devices, policies).
pub const BASELINE: (usize, usize) = (10, 10);

/// First synthetic tunnel address: the start of CGNAT space 100.64.0.0/10.
const CGNAT_FIRST: u32 = u32::from_be_bytes([100, 64, 0, 1]);
/// Synthetic devices stay below 100.96.0.0, the lab's own device network.
const CGNAT_ROOM: usize = (u32::from_be_bytes([100, 96, 0, 0]) - CGNAT_FIRST) as usize;
/// Each synthetic policy's own /29 comes from 198.18.0.0/15 (benchmarking space).
const OWN_NETS: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const OWN_NETS_ROOM: usize = (1 << 17) / 8;
/// Team groups of the synthetic users.
const TEAMS: usize = 200;
/// The policy of the lab's connections.
pub const LAB_POLICY: &str = "bench-audit";

const METRIC_SUM: &str = "sshgw_admission_decision_seconds_sum ";
const METRIC_COUNT: &str = "sshgw_admission_decision_seconds_count ";

/// Which state document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Devices,
    Policies,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Devices, Table::Policies];

    pub fn path(self) -> &'static str {
        match self {
            Table::Devices => "/v1/devices",
            Table::Policies => "/v1/policies",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Table::Devices => "devices",
            Table::Policies => "policies",
        }
    }

    /// The document with `entries` entries (see the module docs).
    pub fn document(self, entries: usize) -> Result<Value> {
        match self {
            Table::Devices => device_table(entries),
            Table::Policies => policy_set(entries),
        }
    }
}

/// Push and read-back times of one table size.
#[derive(Debug, Clone, Serialize)]
pub struct PushSize {
    pub table: Table,
    pub entries: usize,
    /// The generated document (compact JSON), pushed once to get the daemon's form of it.
    pub generated_bytes: usize,
    /// The pushed document: the daemon's form, as a read-back returns it.
    pub bytes: usize,
    /// Wall time of each `PUT` (s).
    pub push_s: Series,
    /// Wall time of each `GET` of the same table right after (s).
    pub read_back_s: Series,
    /// Bytes of the read-back reply body.
    pub read_back_bytes: usize,
    /// Median push / median read-back.
    pub ratio: f64,
    /// The daemon's answer when it refused the table (nothing else was measured).
    pub refused: Option<String>,
}

/// Mean decision time at one (devices, policies) size.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionCell {
    pub devices: usize,
    pub policies: usize,
    /// Decisions counted (the connections opened).
    pub decisions: u64,
    /// Connections of the sample that failed (not decided, left out).
    pub failed: usize,
    /// Median of the chunk means.
    pub ns: f64,
    /// Mean over every decision of the sample.
    pub mean_ns: f64,
    /// The baseline measured just before and just after this size.
    pub baseline_before_ns: f64,
    pub baseline_after_ns: f64,
    /// Mean of the two baselines.
    pub baseline_ns: f64,
    /// `ns / baseline_ns`.
    pub ratio: f64,
}

impl DecisionCell {
    pub fn new(
        (devices, policies): (usize, usize),
        sample: &Decisions,
        before: &Decisions,
        after: &Decisions,
    ) -> Self {
        let baseline_ns = (before.ns() + after.ns()) / 2.0;
        Self {
            devices,
            policies,
            decisions: sample.count,
            failed: sample.failed,
            ns: sample.ns(),
            mean_ns: sample.mean_ns,
            baseline_before_ns: before.ns(),
            baseline_after_ns: after.ns(),
            baseline_ns,
            ratio: ratio(sample.ns(), baseline_ns),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyFigure {
    pub baseline: (usize, usize),
    /// Connections per decision sample.
    pub connections: usize,
    /// Chunks per sample (the histogram is read after each).
    pub chunks: usize,
    /// Timed pushes per table size.
    pub push_rounds: usize,
    pub pushes: Vec<PushSize>,
    pub cells: Vec<DecisionCell>,
    /// The baseline samples in the order measured.
    pub baseline_ns: Vec<f64>,
    /// Connections that failed in any sample (baselines included), and the first reasons.
    pub failed: usize,
    pub failures: Vec<String>,
}

impl PolicyFigure {
    pub fn push(&self, table: Table, entries: usize) -> Option<&PushSize> {
        self.pushes
            .iter()
            .find(|p| p.table == table && p.entries == entries)
    }

    /// The sizes of `table` the daemon accepted, in the order measured.
    pub fn accepted(&self, table: Table) -> Vec<usize> {
        self.pushes
            .iter()
            .filter(|p| p.table == table && p.refused.is_none())
            .map(|p| p.entries)
            .collect()
    }

    pub fn refused(&self) -> impl Iterator<Item = &PushSize> {
        self.pushes.iter().filter(|p| p.refused.is_some())
    }

    fn note_failures(&mut self, d: &Decisions) {
        self.failed += d.failed;
        let room = MAX_FAILURES_KEPT.saturating_sub(self.failures.len());
        self.failures.extend(d.errors.iter().take(room).cloned());
    }
}

/// Failure reasons a figure keeps.
const MAX_FAILURES_KEPT: usize = 5;

/// The growth of the decision histogram over one sample, read after each chunk.
#[derive(Debug, Clone, Serialize)]
pub struct Decisions {
    pub count: u64,
    /// Each chunk's growth of the sum over its growth of the count (ns).
    pub chunk_ns: Vec<f64>,
    /// The same over the whole sample (ns).
    pub mean_ns: f64,
    /// Connections that failed (never decided; left out).
    pub failed: usize,
    /// Why, for the first few.
    pub errors: Vec<String>,
}

impl Decisions {
    /// From each chunk's (growth of the sum in seconds, growth of the count).
    pub fn from_chunks(chunks: &[(f64, u64)]) -> Self {
        let count: u64 = chunks.iter().map(|c| c.1).sum();
        let sum: f64 = chunks.iter().map(|c| c.0).sum();
        Self {
            count,
            chunk_ns: chunks.iter().map(|&(s, n)| s / n as f64 * 1e9).collect(),
            mean_ns: sum / count as f64 * 1e9,
            failed: 0,
            errors: Vec::new(),
        }
    }

    /// The sample's figure: the median of its chunk means.
    pub fn ns(&self) -> f64 {
        median(&self.chunk_ns)
    }
}

/// Runs the figure in `env` (`exe` is this runner, for `tcp-connect` in the device
/// namespace).
pub fn run(
    env: &BenchEnv<'_>,
    exe: &Path,
    sizes: &Sizes,
    log: &dyn Fn(&str),
) -> Result<PolicyFigure> {
    let base = Baseline::new()?;
    base.put(env)?;
    let mut pushes = Vec::new();
    for table in Table::ALL {
        let list = match table {
            Table::Devices => &sizes.policy_devices,
            Table::Policies => &sizes.policy_counts,
        };
        for &entries in list {
            let p = push_size(env, &base, table, entries, sizes.push_rounds)?;
            log(&push_line(&p));
            pushes.push(p);
        }
    }
    let mut figure = PolicyFigure {
        baseline: BASELINE,
        connections: sizes.policy_connections,
        chunks: sizes.policy_chunks.max(1),
        push_rounds: sizes.push_rounds,
        pushes,
        cells: Vec::new(),
        baseline_ns: Vec::new(),
        failed: 0,
        failures: Vec::new(),
    };
    decision_cells(env, exe, &base, &mut figure, log)?;
    Ok(figure)
}

fn push_line(p: &PushSize) -> String {
    match &p.refused {
        Some(why) => format!("push {} {}: refused: {why}", p.entries, p.table.label()),
        None => format!(
            "push {} {} ({} bytes): {:.4} s, read-back {:.4} s",
            p.entries,
            p.table.label(),
            p.bytes,
            p.push_s.median,
            p.read_back_s.median
        ),
    }
}

/// Measures every accepted (devices, policies) size against the baseline around it.
fn decision_cells(
    env: &BenchEnv<'_>,
    exe: &Path,
    base: &Baseline,
    figure: &mut PolicyFigure,
    log: &dyn Fn(&str),
) -> Result<()> {
    let (n, k) = (figure.connections, figure.chunks);
    let mut before = decide(env, exe, n, k)?;
    figure.note_failures(&before);
    figure.baseline_ns.push(before.ns());
    for devices in figure.accepted(Table::Devices) {
        for policies in figure.accepted(Table::Policies) {
            put(env, Table::Devices, &body(Table::Devices, devices)?)?;
            put(env, Table::Policies, &body(Table::Policies, policies)?)?;
            let sample = decide(env, exe, n, k)?;
            base.put(env)?;
            let after = decide(env, exe, n, k)?;
            figure.note_failures(&sample);
            figure.note_failures(&after);
            figure.baseline_ns.push(after.ns());
            let cell = DecisionCell::new((devices, policies), &sample, &before, &after);
            log(&format!(
                "decision {devices} devices x {policies} policies: {:.0} ns, mean {:.0} ns ({:.2}x the baseline, {:.0} ns)",
                cell.ns, cell.mean_ns, cell.ratio, cell.baseline_ns
            ));
            figure.cells.push(cell);
            before = after;
        }
    }
    Ok(())
}

/// The baseline documents, serialized once.
struct Baseline {
    devices: Vec<u8>,
    policies: Vec<u8>,
}

impl Baseline {
    fn new() -> Result<Self> {
        Ok(Self {
            devices: body(Table::Devices, BASELINE.0)?,
            policies: body(Table::Policies, BASELINE.1)?,
        })
    }

    fn of(&self, table: Table) -> &[u8] {
        match table {
            Table::Devices => &self.devices,
            Table::Policies => &self.policies,
        }
    }

    fn put(&self, env: &BenchEnv<'_>) -> Result<()> {
        put(env, Table::Devices, &self.devices)?;
        put(env, Table::Policies, &self.policies)?;
        Ok(())
    }
}

/// `table`'s document with `entries` entries as compact JSON.
fn body(table: Table, entries: usize) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&table.document(entries)?)?)
}

/// One request on the control socket: its reply and wall time.
fn timed(
    env: &BenchEnv<'_>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(crate::ApiReply, f64)> {
    let started = Instant::now();
    let reply = env.gw.api_bytes(method, path, body)?;
    Ok((reply, started.elapsed().as_secs_f64()))
}

/// What a refused request answered.
fn refusal(reply: &crate::ApiReply) -> String {
    let why = reply.error().unwrap_or_else(|| reply.body.clone());
    format!("HTTP {}: {why}", reply.status)
}

/// Replaces `table` with `body`; fails with the daemon's answer unless it is accepted.
fn put(env: &BenchEnv<'_>, table: Table, body: &[u8]) -> Result<f64> {
    let (reply, secs) = timed(env, "PUT", table.path(), Some(body))?;
    if reply.status != 200 {
        bail!("PUT {}: {}", table.path(), refusal(&reply));
    }
    Ok(secs)
}

/// Pushes `entries` once and reads the table back: the daemon's own form of it, which
/// the timed rounds push, so that a push and its read-back carry the same bytes. Then
/// `rounds` × (push, read back, put the baseline back).
fn push_size(
    env: &BenchEnv<'_>,
    base: &Baseline,
    table: Table,
    entries: usize,
    rounds: usize,
) -> Result<PushSize> {
    let generated = body(table, entries)?;
    let mut size = PushSize {
        table,
        entries,
        generated_bytes: generated.len(),
        bytes: 0,
        push_s: Series::new("s", Vec::new()),
        read_back_s: Series::new("s", Vec::new()),
        read_back_bytes: 0,
        ratio: f64::NAN,
        refused: None,
    };
    let (reply, _) = timed(env, "PUT", table.path(), Some(&generated))?;
    if reply.status != 200 {
        size.refused = Some(refusal(&reply));
        return Ok(size);
    }
    let canonical = read_back(env, table)?.0.into_bytes();
    put(env, table, base.of(table))?;
    let (mut push, mut read) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        push.push(put(env, table, &canonical)?);
        let (text, secs) = read_back(env, table)?;
        read.push(secs);
        size.read_back_bytes = text.len();
        put(env, table, base.of(table))?;
    }
    size.bytes = canonical.len();
    size.push_s = Series::new("s", push);
    size.read_back_s = Series::new("s", read);
    size.ratio = ratio(size.push_s.median, size.read_back_s.median);
    Ok(size)
}

/// `GET` of `table`: the body and the request's wall time.
fn read_back(env: &BenchEnv<'_>, table: Table) -> Result<(String, f64)> {
    let (reply, secs) = timed(env, "GET", table.path(), None)?;
    ensure!(
        reply.status == 200,
        "GET {}: {}",
        table.path(),
        refusal(&reply)
    );
    Ok((reply.body, secs))
}

/// Opens `connections` connections from the device to the audited server in `chunks`
/// chunks, reading the daemon's decision histogram after each.
fn decide(env: &BenchEnv<'_>, exe: &Path, connections: usize, chunks: usize) -> Result<Decisions> {
    let per = connections.div_ceil(chunks.max(1)).max(1);
    let (mut grown, mut failed, mut errors) = (Vec::new(), 0, Vec::new());
    let mut left = connections.max(1);
    while left > 0 {
        let n = per.min(left);
        let (sum_count, connected) = decide_chunk(env, exe, n)?;
        grown.push(sum_count);
        failed += connected.failed;
        errors.extend(connected.errors);
        left -= n;
    }
    Ok(Decisions {
        failed,
        errors,
        ..Decisions::from_chunks(&grown)
    })
}

/// One chunk: the growth of the histogram's (sum in seconds, count), and what
/// `tcp-connect` reported (failed connections carry the sockets' states).
fn decide_chunk(
    env: &BenchEnv<'_>,
    exe: &Path,
    connections: usize,
) -> Result<((f64, u64), Connected)> {
    let before = decision_metrics(env)?;
    let mut connected = connect_from_device(env, exe, connections)
        .with_context(|| format!("{}{}", env.diagnostics(), socket_states(env)))?;
    if connected.failed > 0 {
        let states = socket_states(env).replace('\n', "; ");
        for e in &mut connected.errors {
            e.push_str(&format!(" ({states})"));
        }
    }
    let want = before.1 + connected.connections as u64;
    let mut seen = before.1;
    let after = poll_until(
        &format!("sshgw to decide {} connections", connected.connections),
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            let now = decision_metrics(env)?;
            seen = now.1;
            Ok((now.1 >= want).then_some(now))
        },
    )
    .with_context(|| {
        format!(
            "sshgw decided {} of {} connections",
            seen - before.1,
            connected.connections
        )
    })?;
    Ok(((after.0 - before.0, after.1 - before.1), connected))
}

/// How many sockets of the device and the router are in each TCP state, for the audited
/// server's port 22 (for an error message).
fn socket_states(env: &BenchEnv<'_>) -> String {
    let server = SocketAddr::new(Route::Sshgw.addr(), 22).to_string();
    let mut out = String::new();
    for ns in [&env.lab.dev, &env.lab.rtr] {
        let text = ns
            .exec("ss", &["-tanH"])
            .unwrap_or_else(|e| format!("{e:#}"));
        let mut states = std::collections::BTreeMap::<&str, usize>::new();
        for line in text.lines().filter(|l| l.contains(&server)) {
            let state = line.split_whitespace().next().unwrap_or("?");
            *states.entry(state).or_default() += 1;
        }
        out.push_str(&format!(
            "{} sockets with {server}: {states:?}\n",
            ns.name()
        ));
    }
    out
}

/// (sum in seconds, count) of the daemon's `sshgw_admission_decision_seconds`.
fn decision_metrics(env: &BenchEnv<'_>) -> Result<(f64, u64)> {
    let reply = env.gw.api_bytes("GET", "/metrics", None)?;
    ensure!(reply.status == 200, "GET /metrics: {}", refusal(&reply));
    parse_decision_metrics(&reply.body)
}

/// (sum in seconds, count) of `sshgw_admission_decision_seconds` in a Prometheus text
/// exposition.
pub fn parse_decision_metrics(text: &str) -> Result<(f64, u64)> {
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .with_context(|| format!("/metrics has no {}line", prefix))
    };
    let sum = value(METRIC_SUM)?;
    let count = value(METRIC_COUNT)?;
    Ok((
        sum.parse()
            .with_context(|| format!("{METRIC_SUM}{sum:?} is not a number"))?,
        count
            .parse()
            .with_context(|| format!("{METRIC_COUNT}{count:?} is not a count"))?,
    ))
}

/// Runs `sshgw-bench tcp-connect` in the device namespace.
fn connect_from_device(env: &BenchEnv<'_>, exe: &Path, connections: usize) -> Result<Connected> {
    let target = SocketAddr::new(Route::Sshgw.addr(), 22).to_string();
    let mut cmd = env.lab.dev.exec_command(exe);
    cmd.args(["tcp-connect", "--connect", &target, "--count"])
        .arg(connections.to_string());
    let timeout = Duration::from_secs(30) + Duration::from_millis(50) * connections as u32;
    let out = env
        .lab
        .procs()
        .run_quiet("tcp-connect", &mut cmd, timeout)?
        .check("sshgw-bench tcp-connect")?;
    serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("tcp-connect printed {:?}", out.stdout))
}

/// Longest wait for one connection, and for its first line.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What `tcp-connect` reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Connected {
    /// Connections made.
    pub connections: usize,
    /// Of those, how many got the server's SSH banner.
    pub banners: usize,
    /// Connections that could not be made (within [`CONNECT_TIMEOUT`]).
    pub failed: usize,
    /// Why, for the first few.
    pub errors: Vec<String>,
    pub seconds: f64,
}

/// More failed connections than this (per `tcp-connect` run of `count`) end the figure.
fn max_failures(count: usize) -> usize {
    (count / 100).max(3)
}

/// `sshgw-bench tcp-connect --connect ADDR --count N`: [`connect_many`], printed as JSON.
pub fn tcp_connect(connect: &str, count: usize) -> Result<()> {
    let addr: SocketAddr = connect
        .parse()
        .with_context(|| format!("--connect {connect:?} is not ADDR:PORT"))?;
    println!("{}", serde_json::to_string(&connect_many(&addr, count)?)?);
    Ok(())
}

/// `count` connections to `addr` one after another, each reset once the server's first
/// line (its SSH banner) arrived, or after [`CONNECT_TIMEOUT`]. A connection that cannot
/// be made is counted and skipped; more than [`max_failures`] is an error.
pub fn connect_many(addr: &SocketAddr, count: usize) -> Result<Connected> {
    let started = Instant::now();
    let mut out = Connected::default();
    for i in 0..count {
        match connect_once(addr) {
            Ok(banner) => {
                out.connections += 1;
                out.banners += usize::from(banner);
            }
            Err(e) => {
                out.failed += 1;
                if out.errors.len() < MAX_FAILURES_KEPT {
                    out.errors
                        .push(format!("connection {} of {count} to {addr}: {e:#}", i + 1));
                }
            }
        }
        if out.failed > max_failures(count) {
            bail!(
                "{} of {} connections to {addr} failed: {}",
                out.failed,
                i + 1,
                out.errors.join("; ")
            );
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// One connection: whether the banner came. It ends with a reset (`SO_LINGER` 0), so
/// neither end keeps a TIME-WAIT socket that a later connection's 4-tuple could meet.
fn connect_once(addr: &SocketAddr) -> Result<bool> {
    let stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)?;
    let reset = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &reset)?;
    first_line(stream)
}

/// Reads until a newline, EOF or [`CONNECT_TIMEOUT`]: whether an SSH banner came.
fn first_line(mut stream: TcpStream) -> Result<bool> {
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !seen.contains(&b'\n') && seen.len() < 4096 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    Ok(seen.starts_with(b"SSH-"))
}

/// A device table of `entries` entries: the lab's device and `entries − 1` synthetic ones.
pub fn device_table(entries: usize) -> Result<Value> {
    ensure!(
        entries >= 1,
        "a device table holds at least the lab's device"
    );
    ensure!(
        entries - 1 <= CGNAT_ROOM,
        "{entries} devices do not fit below the lab's 100.96.0.0/24"
    );
    let mut devices = vec![crate::gateway::default_devices()["devices"][0].clone()];
    devices.extend((0..entries - 1).map(synthetic_device));
    Ok(json!({ "devices": devices }))
}

/// Synthetic device `i`: user `i / 2` has a laptop (even) and a phone (odd).
fn synthetic_device(i: usize) -> Value {
    let user = i / 2;
    let kind = if i.is_multiple_of(2) {
        "laptop"
    } else {
        "phone"
    };
    let address = Ipv4Addr::from(CGNAT_FIRST + i as u32);
    let role = if user % 10 == 9 {
        "contractors"
    } else {
        "staff"
    };
    let posture: &[&str] = if i.is_multiple_of(2) {
        &["disk-encryption", "os-up-to-date"]
    } else {
        &["os-up-to-date"]
    };
    json!({
        "id": format!("{kind}-{user:06}"),
        "addresses": [address.to_string()],
        "user": {"email": user_email(user), "name": format!("User {user}"),
                 "groups": [role, team(user)]},
        "posture": posture
    })
}

fn user_email(user: usize) -> String {
    format!("user{user:06}@example.com")
}

fn team(k: usize) -> String {
    format!("team-{:03}", k % TEAMS)
}

/// A policy set of `entries` entries: `entries − 1` synthetic policies, then the lab's.
pub fn policy_set(entries: usize) -> Result<Value> {
    ensure!(entries >= 1, "a policy set holds at least the lab's policy");
    ensure!(
        entries - 1 <= OWN_NETS_ROOM,
        "{entries} policies do not fit their own networks into 198.18.0.0/15"
    );
    let mut policies: Vec<Value> = (0..entries - 1).map(synthetic_policy).collect();
    policies.push(json!({
        "id": LAB_POLICY, "name": "Bench: audited", "precedence": entries,
        "enabled": true, "action": "audit_ssh",
        "destinations": [format!("{}/32", Route::Sshgw.addr())], "ports": [22],
        "identity": {"groups": ["developers"]}
    }));
    Ok(json!({ "policies": policies }))
}

/// Synthetic policy `j` (precedence `j + 1`): covers the audited server, never the lab user.
fn synthetic_policy(j: usize) -> Value {
    let shared = network(audited_v4(), 24 + (j % 9) as u32);
    let own = format!("{}/29", Ipv4Addr::from(OWN_NETS + 8 * j as u32));
    let identity = match j % 3 {
        0 => json!({"emails": [user_email(7 * j), user_email(7 * j + 1)]}),
        1 => json!({"groups": [team(j), "contractors"]}),
        _ => json!({"email_domains": [format!("partner{:03}.example", j % 100)],
                    "groups": [team(j + 1)]}),
    };
    let ports: &[u16] = if j % 4 == 3 { &[22, 2222] } else { &[22] };
    let posture: &[&str] = if j.is_multiple_of(2) {
        &["disk-encryption"]
    } else {
        &[]
    };
    json!({
        "id": format!("team-{j:05}"),
        "name": format!("Team {j}: servers"),
        "precedence": j + 1,
        "enabled": true,
        "action": if j % 5 == 4 { "block" } else { "audit_ssh" },
        "destinations": [shared, own],
        "ports": ports,
        "identity": identity,
        "posture": posture
    })
}

fn audited_v4() -> Ipv4Addr {
    crate::topology::addr::SRV_AUDITED_V4
}

/// `addr/len` with the host bits cleared (`len` 1 to 32).
fn network(addr: Ipv4Addr, len: u32) -> String {
    let mask = u32::MAX << (32 - len);
    format!("{}/{len}", Ipv4Addr::from(u32::from(addr) & mask))
}

/// Summary lines: the largest accepted decision size and push sizes, and refusals.
pub fn rows(f: &PolicyFigure) -> Vec<super::floor::SummaryRow> {
    use super::stats::num;
    let mut rows = Vec::new();
    if let Some(c) = f.cells.iter().max_by_key(|c| (c.devices, c.policies)) {
        rows.push(super::floor::SummaryRow {
            figure: format!(
                "i) policy decision, {} devices × {} policies (ns: baseline {} × {} vs this size)",
                c.devices, c.policies, f.baseline.0, f.baseline.1
            ),
            direct: num(c.baseline_ns, 0),
            sshgw: num(c.ns, 0),
            comparison: format!("{}×", num(c.ratio, 2)),
            target: "",
            ok: None,
        });
    }
    for table in Table::ALL {
        let Some(p) = f.accepted(table).last().and_then(|&n| f.push(table, n)) else {
            continue;
        };
        rows.push(super::floor::SummaryRow {
            figure: format!(
                "i) push of {} {} ({} bytes) (s: read-back vs push)",
                p.entries,
                table.label(),
                p.bytes
            ),
            direct: num(p.read_back_s.median, 3),
            sshgw: num(p.push_s.median, 3),
            comparison: format!("{}×", num(p.ratio, 1)),
            target: "",
            ok: None,
        });
    }
    for p in f.refused() {
        rows.push(super::floor::SummaryRow {
            figure: format!("i) push of {} {}", p.entries, p.table.label()),
            direct: String::new(),
            sshgw: "refused".to_owned(),
            comparison: p.refused.clone().unwrap_or_default(),
            target: "",
            ok: None,
        });
    }
    rows
}

/// The details: every decision size and every push size.
pub fn markdown(f: &PolicyFigure, md: &mut String) {
    decision_markdown(f, md);
    push_markdown(f, md);
}

fn decision_markdown(f: &PolicyFigure, md: &mut String) {
    use super::stats::num;
    use std::fmt::Write as _;
    let _ = writeln!(
        md,
        "\n**Policy decision** (sshgw's `sshgw_admission_decision_seconds`: {} connections per sample in {} chunks, the median of the chunks' means and the mean of all; the matching policy is evaluated after every other policy; baseline {} devices × {} policies, measured before and after each size)\n",
        f.connections, f.chunks, f.baseline.0, f.baseline.1
    );
    md.push_str("| Devices | Policies | Decisions | Decision (ns) | Mean (ns) | Baseline before / after (ns) | vs baseline |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    for c in &f.cells {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} / {} | {}× |",
            c.devices,
            c.policies,
            c.decisions,
            num(c.ns, 0),
            num(c.mean_ns, 0),
            num(c.baseline_before_ns, 0),
            num(c.baseline_after_ns, 0),
            num(c.ratio, 2)
        );
    }
    if f.failed > 0 {
        let _ = writeln!(
            md,
            "\nConnections that failed (not decided, left out of the samples): {}. First: {}",
            f.failed,
            f.failures.join("; ").replace('|', "\\|")
        );
    }
}

fn push_markdown(f: &PolicyFigure, md: &mut String) {
    use super::stats::num;
    use std::fmt::Write as _;
    let _ = writeln!(
        md,
        "\n**Push** (wall time of the control-socket `PUT` of the daemon's own form of the table, as a read-back returns it, replacing a {}-entry table; read-back: `GET` of the same table right after; median of {})\n",
        f.baseline.0, f.push_rounds
    );
    md.push_str("| Table | Entries | Generated (bytes) | Pushed / read back (bytes) | Push (s) [min–max] | Read-back (s) | Push / read-back |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for p in &f.pushes {
        if let Some(why) = &p.refused {
            let _ = writeln!(
                md,
                "| {} | {} | {} | refused: {} | | | |",
                p.table.label(),
                p.entries,
                p.generated_bytes,
                why.replace('|', "\\|")
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} / {} | {} [{}–{}] | {} | {}× |",
            p.table.label(),
            p.entries,
            p.generated_bytes,
            p.bytes,
            p.read_back_bytes,
            num(p.push_s.median, 4),
            num(p.push_s.min, 4),
            num(p.push_s.max, 4),
            num(p.read_back_s.median, 4),
            num(p.ratio, 1)
        );
    }
}

/// The median of the baselines beside the cells of `devices` (for the chart).
pub fn baseline_at(f: &PolicyFigure, devices: usize) -> f64 {
    median(
        &f.cells
            .iter()
            .filter(|c| c.devices == devices)
            .map(|c| c.baseline_ns)
            .collect::<Vec<_>>(),
    )
}
