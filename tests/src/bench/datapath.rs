//! (e) Datapath: what the TC program costs traffic it does not steer.
//!
//! * Cost per packet: with `kernel.bpf_stats_enabled=1` the kernel accounts each program's
//!   `run_time_ns` and `run_cnt`; `bpftool prog show id N -j` reads them before and after a
//!   transfer (N from `sshgw status --json`, `interfaces[].program_id`). The program sits on
//!   `r0` ingress, so it sees the device→server packets (data of an upload). Classes: plain
//!   TCP to a port sshgw does not intercept (5201), SSH to a non-audited server (port 22:
//!   the program also looks up a local socket for every non-SYN packet), and SSH that is
//!   intercepted. A "packet" is one skb: veth passes GSO super-packets of up to 64 KiB,
//!   which is why bytes per packet is reported too.
//! * The hook's own cost: the same accounting of an empty program (`sshgw-datapath-empty`
//!   from gateway-ebpf, which only returns `TC_ACT_PIPE`), attached the way the daemon
//!   attaches its program (TCX ingress of `r0`, first, through aya from this process) while
//!   the daemon is stopped with its datapath removed, over the same traffic: the plain TCP
//!   transfer and the non-audited SSH upload. Its `run_time_ns` is what the kernel's
//!   accounting and the call cost on their own; "minus the hook" is real − empty per class
//!   (the intercepted class is set against the empty program's non-audited SSH figure: the
//!   same kind of packets, and without the daemon nothing is intercepted).
//! * Forwarded throughput: a bulk TCP transfer from `dev` to 203.0.113.20:5201 in `srv`
//!   through the router, with the program attached and with the datapath removed (the
//!   daemon runs with `on_stop = "remove"` and is stopped for those samples), interleaved
//!   with the order swapped every round, and with the daemon idle (its CPU time steady)
//!   before a sample with the program. Each round is a pair, and the figure is the median
//!   over the rounds of with / without of the same round, with its min–max and quartiles
//!   (the ratio of the two medians is kept for comparison). While stopped, a third sample
//!   runs with the empty program attached (after the bare one).
//!   The sender and receiver are this binary (`sshgw-bench tcp-source` / `tcp-sink`): the
//!   sender writes N bytes, half-closes, and stops the clock when the receiver
//!   acknowledges that it has read all N.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, links::FdLink, tc::TcAttachOptions};
use serde::Serialize;
use serde_json::Value;

use super::bulk::{Direction, MIB, Transfer};
use super::env::{BenchEnv, Route};
use super::stats::{Series, median, quantile, ratio};
use crate::gateway::{bpf_link_exists, bpftool};
use crate::topology::iface;

/// The port of the plain TCP transfer (not in `[datapath] ports`).
pub const TCP_PORT: u16 = 5201;
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// The empty program's object (built by `cargo xtask build-ebpf` next to the real one) and
/// its entry point; `SSHGW_EBPF_EMPTY_OBJECT` overrides the path.
const EMPTY_OBJECT: &str = "bpfel-unknown-none/release/sshgw-datapath-empty";
const EMPTY_OBJECT_ENV: &str = "SSHGW_EBPF_EMPTY_OBJECT";
const EMPTY_PROGRAM: &str = "sshgw_empty";

/// Turns on BPF run-time statistics (a host-wide sysctl) and restores the old value on drop.
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let previous = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("reading {STATS_SYSCTL}"))?
            .trim()
            .to_owned();
        std::fs::write(STATS_SYSCTL, "1")
            .with_context(|| format!("writing 1 to {STATS_SYSCTL}"))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, &self.previous);
    }
}

/// `run_time_ns` and `run_cnt` of one program.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

pub fn prog_stats(id: u32) -> Result<ProgStats> {
    let out = std::process::Command::new(bpftool()?)
        .args(["prog", "show", "id", &id.to_string(), "-j"])
        .output()
        .context("running bpftool prog show")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show id {id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("bpftool printed no JSON")?;
    Ok(ProgStats {
        run_time_ns: v["run_time_ns"].as_u64().unwrap_or(0),
        run_cnt: v["run_cnt"].as_u64().unwrap_or(0),
    })
}

/// One traffic class's cost, summed over its samples.
#[derive(Debug, Clone, Serialize)]
pub struct ProgCost {
    pub class: &'static str,
    pub bytes: u64,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    pub ns_per_packet: f64,
    pub bytes_per_packet: f64,
    /// ns per packet of each sample.
    pub samples: Vec<f64>,
    /// The empty program's ns per packet on the same kind of traffic (NaN: not measured,
    /// and for the empty program's own rows).
    pub empty_ns_per_packet: f64,
    /// `ns_per_packet - empty_ns_per_packet`: the program's cost minus the hook's.
    pub minus_hook_ns: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatapathFigure {
    pub tcp_bytes: u64,
    pub rounds: usize,
    pub with_program_mib_s: Series,
    pub without_program_mib_s: Series,
    /// With the empty program attached instead (daemon stopped).
    pub empty_program_mib_s: Series,
    /// Median with / median without (kept for comparison).
    pub ratio: f64,
    /// Median over the rounds of with / without of the same round (`paired.median`).
    pub paired_ratio: f64,
    /// With / without of each round, in round order, and its summary.
    pub paired: Series,
    /// First and third quartiles of `paired`.
    pub paired_q1: f64,
    pub paired_q3: f64,
    /// Empty program / without of each round.
    pub empty_paired: Series,
    pub costs: Vec<ProgCost>,
    /// The empty program's cost per class (`empty_ns_per_packet` of `costs` comes from here).
    pub empty_costs: Vec<ProgCost>,
}

impl DatapathFigure {
    pub fn cost(&self, class: &str) -> Option<&ProgCost> {
        self.costs.iter().find(|c| c.class == class)
    }

    pub fn empty_cost(&self, class: &str) -> Option<&ProgCost> {
        self.empty_costs.iter().find(|c| c.class == class)
    }
}

pub const CLASS_TCP: &str = "non-audited TCP (port 5201)";
pub const CLASS_SSH_DIRECT: &str = "non-audited SSH (port 22)";
pub const CLASS_SSH_INTERCEPTED: &str = "intercepted SSH";

struct CostAcc {
    class: &'static str,
    bytes: u64,
    total: ProgStats,
    samples: Vec<f64>,
}

impl CostAcc {
    fn new(class: &'static str) -> Self {
        Self {
            class,
            bytes: 0,
            total: ProgStats::default(),
            samples: Vec::new(),
        }
    }

    fn add(&mut self, bytes: u64, before: ProgStats, after: ProgStats) {
        let cnt = after.run_cnt.saturating_sub(before.run_cnt);
        let ns = after.run_time_ns.saturating_sub(before.run_time_ns);
        self.bytes += bytes;
        self.total.run_cnt += cnt;
        self.total.run_time_ns += ns;
        self.samples.push(ratio(ns as f64, cnt as f64));
    }

    fn finish(self) -> ProgCost {
        ProgCost {
            class: self.class,
            bytes: self.bytes,
            run_cnt: self.total.run_cnt,
            run_time_ns: self.total.run_time_ns,
            ns_per_packet: ratio(self.total.run_time_ns as f64, self.total.run_cnt as f64),
            bytes_per_packet: ratio(self.bytes as f64, self.total.run_cnt as f64),
            samples: self.samples,
            empty_ns_per_packet: f64::NAN,
            minus_hook_ns: f64::NAN,
        }
    }
}

/// Sets `real`'s empty-program figure and the difference.
fn subtract_hook(real: &mut ProgCost, empty: Option<&ProgCost>) {
    if let Some(empty) = empty {
        real.empty_ns_per_packet = empty.ns_per_packet;
        real.minus_hook_ns = real.ns_per_packet - empty.ns_per_packet;
    }
}

/// Where the empty program's object is: `SSHGW_EBPF_EMPTY_OBJECT`, or the eBPF target
/// directory next to this binary's (`<target>/release/sshgw-bench`).
fn empty_object(exe: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(EMPTY_OBJECT_ENV) {
        return Ok(PathBuf::from(path));
    }
    let target = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("no target directory above {}", exe.display()))?;
    let path = target.join(EMPTY_OBJECT);
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo xtask build-ebpf` (or set {EMPTY_OBJECT_ENV})",
            path.display()
        );
    }
    Ok(path)
}

/// The empty program attached to an interface of a network namespace the way the daemon
/// attaches its own (TCX ingress, first). A thread enters the namespace (`setns` changes only
/// the calling thread's), loads and attaches the program and holds the link; dropping this
/// ends the thread, which closes the link and so detaches the program.
pub struct EmptyProgram {
    pub program_id: u32,
    pub link_id: u32,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmptyProgram {
    pub fn attach(object: &Path, netns: &Path, interface: &str) -> Result<Self> {
        let (ids_tx, ids_rx) = mpsc::channel::<Result<(u32, u32)>>();
        let (stop, stopped) = mpsc::channel::<()>();
        let (object, netns, interface) =
            (object.to_owned(), netns.to_owned(), interface.to_owned());
        let thread = std::thread::Builder::new()
            .name("tc-empty".into())
            .spawn(move || {
                let attach = || -> Result<(aya::Ebpf, FdLink, u32, u32)> {
                    let ns = std::fs::File::open(&netns)
                        .with_context(|| format!("opening {}", netns.display()))?;
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("entering {}", netns.display()))?;
                    let mut ebpf = aya::Ebpf::load_file(&object)
                        .with_context(|| format!("loading {}", object.display()))?;
                    let prog: &mut SchedClassifier = ebpf
                        .program_mut(EMPTY_PROGRAM)
                        .with_context(|| {
                            format!("{} has no program {EMPTY_PROGRAM}", object.display())
                        })?
                        .try_into()?;
                    prog.load().context("loading the empty TC program")?;
                    let link = prog
                        .attach_with_options(
                            &interface,
                            TcAttachType::Ingress,
                            TcAttachOptions::TcxOrder(LinkOrder::first()),
                        )
                        .with_context(|| format!("attaching the empty program to {interface}"))?;
                    let program_id = prog.info()?.id();
                    let link: FdLink = prog
                        .take_link(link)?
                        .try_into()
                        .context("the empty program's link is not a TCX link")?;
                    let link_id = link.info().context("reading the link's info")?.id();
                    Ok((ebpf, link, program_id, link_id))
                };
                match attach() {
                    Ok((ebpf, link, program_id, link_id)) => {
                        let _ = ids_tx.send(Ok((program_id, link_id)));
                        // Until the sender is dropped.
                        let _ = stopped.recv();
                        drop(link);
                        drop(ebpf);
                    }
                    Err(err) => {
                        let _ = ids_tx.send(Err(err));
                    }
                }
            })
            .context("spawning the thread that attaches the empty program")?;
        let mut this = Self {
            program_id: 0,
            link_id: 0,
            stop: Some(stop),
            thread: Some(thread),
        };
        let (program_id, link_id) = ids_rx
            .recv()
            .context("the thread attaching the empty program ended")??;
        this.program_id = program_id;
        this.link_id = link_id;
        Ok(this)
    }

    /// Detaches the program and checks that its link is gone.
    pub fn detach(mut self) -> Result<()> {
        self.stop_thread();
        if bpf_link_exists(self.link_id)? {
            bail!(
                "the empty program's link {} is still attached",
                self.link_id
            );
        }
        Ok(())
    }

    fn stop_thread(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EmptyProgram {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Waits (bounded) until the daemon uses no CPU for 200 ms: a freshly started daemon (or
/// one finishing a session) must not compete with the transfer being measured.
fn wait_idle(env: &BenchEnv<'_>) -> Result<()> {
    let pid = env.sshgw_pid()?;
    let mut last = super::sys::cpu_times(pid)?.own;
    crate::wait::poll_until(
        "sshgw to become idle",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let now = super::sys::cpu_times(pid)?.own;
            let idle = now == last;
            last = now;
            Ok(idle.then_some(()))
        },
    )
}

/// Runs one plain TCP transfer from `dev` to the sink; returns MiB/s.
fn tcp_transfer(env: &BenchEnv<'_>, exe: &Path, bytes: u64) -> Result<f64> {
    let target = format!("{}:{TCP_PORT}", Route::Direct.addr());
    let mut cmd = env.lab.dev.exec_command(exe);
    cmd.args([
        "tcp-source",
        "--connect",
        &target,
        "--bytes",
        &bytes.to_string(),
    ]);
    let out = env
        .lab
        .procs()
        .run_quiet(
            "tcp-source",
            &mut cmd,
            Duration::from_secs(60) + Duration::from_secs(bytes / (20 << 20)),
        )?
        .check("sshgw-bench tcp-source")?;
    let v: Value = serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("tcp-source printed {:?}", out.stdout))?;
    let secs = v["seconds"]
        .as_f64()
        .context("no seconds from tcp-source")?;
    Ok(bytes as f64 / MIB / secs)
}

/// The program id and link id of the program attached to the first device-facing interface.
fn attachment(env: &BenchEnv<'_>) -> Result<(u32, u32)> {
    let status = env.gw.status()?;
    status
        .interfaces
        .iter()
        .find_map(|i| Some((i.program_id?, i.link_id?)))
        .with_context(|| format!("sshgw status names no attached program: {}", status.raw))
}

pub fn run(
    env: &mut BenchEnv<'_>,
    exe: &Path,
    tcp_bytes: u64,
    ssh_bytes: u64,
    rounds: usize,
    log: &dyn Fn(&str),
) -> Result<DatapathFigure> {
    let empty_object = empty_object(exe)?;
    let _stats = BpfStats::enable()?;
    let mut sink_cmd = env.lab.srv.exec_command(exe);
    sink_cmd.args(["tcp-sink", "--listen", &format!("0.0.0.0:{TCP_PORT}")]);
    let sink = env.lab.procs().spawn("tcp-sink", &mut sink_cmd)?;
    sink.wait_for_log("listening", Duration::from_secs(10))?;

    let mut tcp = CostAcc::new(CLASS_TCP);
    let mut ssh_direct = CostAcc::new(CLASS_SSH_DIRECT);
    let mut ssh_gw = CostAcc::new(CLASS_SSH_INTERCEPTED);
    let mut empty_tcp = CostAcc::new(CLASS_TCP);
    let mut empty_ssh = CostAcc::new(CLASS_SSH_DIRECT);
    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut with_empty = Vec::new();
    // Warm-up (ARP, socket buffers autotuning).
    tcp_transfer(env, exe, tcp_bytes.min(64 << 20))?;
    for round in 0..rounds {
        let mut with_program = |env: &mut BenchEnv<'_>| -> Result<f64> {
            wait_idle(env)?;
            let (id, _) = attachment(env)?;
            let before = prog_stats(id)?;
            let mib_s = tcp_transfer(env, exe, tcp_bytes)?;
            tcp.add(tcp_bytes, before, prog_stats(id)?);
            Ok(mib_s)
        };
        // Daemon stopped, datapath removed: the bare sample, then the empty program's.
        let mut without_program = |env: &mut BenchEnv<'_>| -> Result<(f64, f64)> {
            let (_, link) = attachment(env)?;
            env.gw.stop()?;
            if bpf_link_exists(link)? {
                bail!(
                    "TC link {link} is still attached after sshgw stopped with on_stop = \"remove\""
                );
            }
            let bare = tcp_transfer(env, exe, tcp_bytes)?;
            let empty = EmptyProgram::attach(&empty_object, &env.lab.rtr.path(), iface::RTR_LAN)?;
            let id = empty.program_id;
            let before = prog_stats(id)?;
            let empty_mib_s = tcp_transfer(env, exe, tcp_bytes)?;
            empty_tcp.add(tcp_bytes, before, prog_stats(id)?);
            let before = prog_stats(id)?;
            Transfer {
                route: Route::Direct,
                direction: Direction::Upload,
                bytes: ssh_bytes,
            }
            .run(env, round)?;
            empty_ssh.add(ssh_bytes, before, prog_stats(id)?);
            empty.detach()?;
            env.gw.start()?;
            Ok((bare, empty_mib_s))
        };
        let (mib_s, (bare, empty_mib_s)) = if round % 2 == 0 {
            let w = with_program(env)?;
            (w, without_program(env)?)
        } else {
            let b = without_program(env)?;
            (with_program(env)?, b)
        };
        with.push(mib_s);
        without.push(bare);
        with_empty.push(empty_mib_s);
        log(&format!(
            "datapath round {}/{rounds}: with program {mib_s:.0} MiB/s, without {bare:.0} MiB/s \
             ({:.3}×), with the empty program {empty_mib_s:.0} MiB/s",
            round + 1,
            mib_s / bare
        ));

        let (id, _) = attachment(env)?;
        for (route, acc) in [
            (Route::Direct, &mut ssh_direct),
            (Route::Sshgw, &mut ssh_gw),
        ] {
            let before = prog_stats(id)?;
            Transfer {
                route,
                direction: Direction::Upload,
                bytes: ssh_bytes,
            }
            .run(env, round)?;
            acc.add(ssh_bytes, before, prog_stats(id)?);
        }
    }
    let paired: Vec<f64> = with.iter().zip(&without).map(|(w, b)| w / b).collect();
    let empty_paired: Vec<f64> = with_empty
        .iter()
        .zip(&without)
        .map(|(e, b)| e / b)
        .collect();
    let mut sorted = paired.clone();
    sorted.sort_by(f64::total_cmp);
    let paired = Series::new("×", paired);
    let with_program_mib_s = Series::new("MiB/s", with);
    let without_program_mib_s = Series::new("MiB/s", without);
    let empty_costs = vec![empty_tcp.finish(), empty_ssh.finish()];
    let find_empty = |class: &str| empty_costs.iter().find(|c| c.class == class);
    let mut costs = vec![tcp.finish(), ssh_direct.finish(), ssh_gw.finish()];
    for c in &mut costs {
        let like = if c.class == CLASS_SSH_INTERCEPTED {
            CLASS_SSH_DIRECT
        } else {
            c.class
        };
        subtract_hook(c, find_empty(like));
    }
    for c in &costs {
        log(&format!(
            "TC program, {}: {:.1} ns/packet over {} packets ({:.0} bytes/packet); \
             empty program {:.1}, minus the hook {:.1}",
            c.class,
            c.ns_per_packet,
            c.run_cnt,
            c.bytes_per_packet,
            c.empty_ns_per_packet,
            c.minus_hook_ns
        ));
    }
    for c in &empty_costs {
        log(&format!(
            "empty TC program, {}: {:.1} ns/packet over {} packets ({:.0} bytes/packet)",
            c.class, c.ns_per_packet, c.run_cnt, c.bytes_per_packet
        ));
    }
    log(&format!(
        "forwarded TCP with / without the program, paired over {rounds} rounds: median {:.3}×, \
         min–max {:.3}–{:.3}×",
        paired.median, paired.min, paired.max
    ));
    let _ = sink.kill();
    Ok(DatapathFigure {
        tcp_bytes,
        rounds,
        ratio: ratio(
            median(&with_program_mib_s.samples),
            median(&without_program_mib_s.samples),
        ),
        paired_ratio: paired.median,
        paired_q1: quantile(&sorted, 0.25),
        paired_q3: quantile(&sorted, 0.75),
        paired,
        empty_paired: Series::new("×", empty_paired),
        with_program_mib_s,
        without_program_mib_s,
        empty_program_mib_s: Series::new("MiB/s", with_empty),
        costs,
        empty_costs,
    })
}

/// `sshgw-bench tcp-sink --listen ADDR`: accepts connections one after another, reads each
/// to EOF and answers with the byte count (8 bytes, big-endian).
pub fn tcp_sink(listen: &str) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening on {listen}");
    std::io::stdout().flush()?;
    let mut buf = vec![0u8; 1 << 20];
    for stream in listener.incoming() {
        let mut stream = stream.context("accepting")?;
        let mut total: u64 = 0;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading"),
            }
        }
        stream.write_all(&total.to_be_bytes())?;
    }
    Ok(())
}

/// `sshgw-bench tcp-source --connect ADDR --bytes N`: sends N zero bytes, half-closes, waits
/// for the sink's count and prints `{"bytes": N, "seconds": S}`.
pub fn tcp_source(connect: &str, bytes: u64) -> Result<()> {
    let mut stream =
        TcpStream::connect(connect).with_context(|| format!("connecting {connect}"))?;
    let buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        stream.write_all(&buf[..n]).context("sending")?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut ack = [0u8; 8];
    stream
        .read_exact(&mut ack)
        .context("reading the sink's count")?;
    let seconds = start.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(ack);
    if got != bytes {
        bail!("the sink read {got} of {bytes} bytes");
    }
    println!(
        "{}",
        serde_json::json!({"bytes": bytes, "seconds": seconds})
    );
    Ok(())
}
