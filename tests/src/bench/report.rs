//! `report.json`, `report.md` and `results.md` (the Results section of
//! `docs/benchmarks.md`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::bulk::{BulkFigure, Direction};
use super::concurrency::ConcurrencyFigure;
use super::datapath::{self, DatapathFigure};
use super::env::Route;
use super::floor::FloorFigure;
use super::latency::LatencyFigure;
use super::profile::Profile;
use super::setup::SetupFigure;
use super::stats::{num, ratio, size};
use super::sys::{self, Machine};
use super::{Figure, Options, Sizes};

/// The targets the figures are reported against.
pub mod target {
    pub const BULK_RATIO: f64 = 0.85;
    pub const BULK_LOGGED_RATIO: f64 = 0.80;
    pub const SETUP_ADDED_MS: f64 = 5.0;
    pub const KEYSTROKE_ADDED_MS: f64 = 0.3;
    pub const SESSIONS: usize = 2000;
    pub const SESSIONS_RSS_MIB: f64 = 256.0;
    pub const TC_NS_PER_PACKET: f64 = 100.0;
    pub const FORWARDED_RATIO: f64 = 0.98;
    pub const CPU_RATIO: f64 = 1.2;
}

#[derive(Debug, Clone, Serialize)]
pub struct FigureError {
    pub figure: Figure,
    pub error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Meets,
    Misses,
    /// No target, or not comparable (quick run).
    Info,
}

impl Verdict {
    fn of(ok: bool) -> Self {
        if ok { Verdict::Meets } else { Verdict::Misses }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Meets => "meets",
            Verdict::Misses => "**misses**",
            Verdict::Info => "",
        }
    }
}

/// One line of the summary table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub figure: String,
    pub direct: String,
    pub sshgw: String,
    pub comparison: String,
    pub target: String,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: u32,
    pub quick: bool,
    pub date: String,
    pub git_commit: Option<String>,
    pub machine: Machine,
    /// `/proc/loadavg` before and after the run (other work on the machine skews figures).
    pub load_before: String,
    pub load_after: String,
    pub duration_s: f64,
    pub sizes: Sizes,
    /// `--gateway-ssh` lines: sshgw ran with these instead of its defaults.
    pub gateway_ssh: Vec<String>,
    pub bulk: Option<BulkFigure>,
    pub setup: Option<SetupFigure>,
    pub latency: Option<LatencyFigure>,
    pub concurrency: Option<ConcurrencyFigure>,
    pub datapath: Option<DatapathFigure>,
    /// (g) the crypto floor; ratios only when `bulk` ran too.
    pub floor: Option<FloorFigure>,
    /// (a) with sshgw on one core, ssh and sshd on the other.
    pub bulk_pinned: Option<BulkFigure>,
    /// Parallel uploads through the pinned sshgw (part of `bulk-pinned`).
    pub bulk_parallel: Option<super::pinned::ParallelFigure>,
    /// (h) decision and push time against the table sizes.
    pub policy: Option<super::policy::PolicyFigure>,
    pub profiles: Vec<Profile>,
    /// (h) thousands of sessions from the russh load client.
    pub scale: Option<super::scale::ScaleFigure>,
    pub summary: Vec<Row>,
    pub errors: Vec<FigureError>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn signed(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:+.decimals$}")
    } else {
        "n/a".to_owned()
    }
}

impl Report {
    pub fn new(opts: &Options) -> Self {
        Self {
            schema: 1,
            quick: opts.quick,
            date: sys::utc_now(),
            git_commit: sys::git_commit(&opts.workspace),
            machine: Machine::probe(),
            load_before: loadavg(),
            load_after: String::new(),
            duration_s: 0.0,
            sizes: opts.sizes.clone(),
            gateway_ssh: opts.gateway_ssh.clone(),
            bulk: None,
            setup: None,
            latency: None,
            concurrency: None,
            datapath: None,
            floor: None,
            bulk_pinned: None,
            bulk_parallel: None,
            policy: None,
            profiles: Vec::new(),
            scale: None,
            summary: Vec::new(),
            errors: Vec::new(),
        }
    }

    pub fn finish(&mut self, duration_s: f64) {
        self.duration_s = duration_s;
        self.load_after = loadavg();
        self.summary = self.rows();
    }

    /// A verdict, or Info in a quick run (its sizes are too small to compare).
    fn verdict(&self, ok: bool) -> Verdict {
        if self.quick {
            Verdict::Info
        } else {
            Verdict::of(ok)
        }
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let mut row = |figure: String,
                       direct: String,
                       sshgw: String,
                       comparison: String,
                       target: &str,
                       verdict: Verdict| {
            rows.push(Row {
                figure,
                direct,
                sshgw,
                comparison,
                target: target.to_owned(),
                verdict,
            })
        };
        if let Some(b) = &self.bulk {
            for direction in Direction::ALL {
                let (Some(d), Some(g), Some(l)) = (
                    b.get(Route::Direct, direction),
                    b.get(Route::Sshgw, direction),
                    b.get(Route::SshgwLogged, direction),
                ) else {
                    continue;
                };
                // Both ways at once has no target: it shows the relay never stalls
                // and what it costs when both directions compete.
                let targeted = direction != Direction::Both;
                row(
                    format!("a) {} {} (MiB/s)", direction.label(), size(b.bytes)),
                    num(d.mib_per_s.median, 0),
                    num(g.mib_per_s.median, 0),
                    format!("{}×", num(g.ratio_to_direct, 2)),
                    if targeted { "≥ 0.85×" } else { "" },
                    if targeted {
                        self.verdict(g.ratio_to_direct >= target::BULK_RATIO)
                    } else {
                        Verdict::Info
                    },
                );
                row(
                    format!("a) {}, command logging (MiB/s)", direction.label()),
                    num(d.mib_per_s.median, 0),
                    num(l.mib_per_s.median, 0),
                    format!("{}×", num(l.ratio_to_direct, 2)),
                    if targeted { "≥ 0.80×" } else { "" },
                    if targeted {
                        self.verdict(l.ratio_to_direct >= target::BULK_LOGGED_RATIO)
                    } else {
                        Verdict::Info
                    },
                );
            }
        }
        if let Some(s) = &self.setup {
            row(
                format!("b) connection setup, median of {} (ms)", s.runs),
                num(s.direct_ms.median, 1),
                num(s.sshgw_ms.median, 1),
                format!("{} ms", signed(s.added_median_ms, 1)),
                "≤ +5 ms",
                self.verdict(s.added_median_ms <= target::SETUP_ADDED_MS),
            );
            row(
                "b) connection setup, p99 (ms)".to_owned(),
                num(s.direct_ms.p99, 1),
                num(s.sshgw_ms.p99, 1),
                format!("{} ms", signed(s.added_p99_ms, 1)),
                "",
                Verdict::Info,
            );
            if !s.failures.is_empty() {
                let count = |r: Route| s.failures.iter().filter(|f| f.route == r).count();
                row(
                    "b) failed connections (not in the figures above)".to_owned(),
                    count(Route::Direct).to_string(),
                    count(Route::Sshgw).to_string(),
                    String::new(),
                    "none",
                    self.verdict(count(Route::Sshgw) == 0),
                );
            }
            let default_kex = s
                .negotiated
                .iter()
                .find(|n| n.route == Route::Direct && !n.pinned_kex)
                .map_or("default", |n| n.kex.as_str());
            row(
                format!(
                    "b) setup median, direct with the client's default key exchange ({default_kex}) (ms)"
                ),
                num(s.direct_default_kex_ms.median, 1),
                num(s.sshgw_ms.median, 1),
                format!(
                    "{} ms",
                    signed(s.sshgw_ms.median - s.direct_default_kex_ms.median, 1)
                ),
                "",
                Verdict::Info,
            );
        }
        if let Some(l) = &self.latency {
            row(
                format!(
                    "c) keystroke round trip, median of {} (ms)",
                    l.samples_per_route
                ),
                num(l.direct_ms.median, 3),
                num(l.sshgw_ms.median, 3),
                format!("{} ms", signed(l.added_median_ms, 3)),
                "≤ +0.3 ms",
                self.verdict(l.added_median_ms <= target::KEYSTROKE_ADDED_MS),
            );
            row(
                "c) keystroke round trip, p99 (ms)".to_owned(),
                num(l.direct_ms.p99, 3),
                num(l.sshgw_ms.p99, 3),
                format!("{} ms", signed(l.added_p99_ms, 3)),
                "",
                Verdict::Info,
            );
        }
        if let Some(c) = &self.concurrency
            && let (Some(d), Some(g)) = (c.last(Route::Direct), c.last(Route::Sshgw))
        {
            let rss = g.memory.last().map_or(f64::NAN, |m| m.rss_mib);
            row(
                format!("d) concurrent idle sessions (of {})", c.target),
                d.reached.to_string(),
                g.reached.to_string(),
                format!("sshgw RSS {} MiB", num(rss, 0)),
                "2,000 sessions, RSS ≤ 256 MiB",
                self.verdict(g.reached >= target::SESSIONS && rss <= target::SESSIONS_RSS_MIB),
            );
            row(
                "d) sshgw per session".to_owned(),
                String::new(),
                format!(
                    "{} KiB RSS, {} fds",
                    num(g.rss_per_session_kib.unwrap_or(f64::NAN), 0),
                    num(g.fds_per_session.unwrap_or(f64::NAN), 2)
                ),
                String::new(),
                "",
                Verdict::Info,
            );
            let failed = |route: Route| -> usize {
                c.ramps
                    .iter()
                    .filter(|r| r.route == route)
                    .map(|r| r.failures.len())
                    .sum()
            };
            if failed(Route::Direct) + failed(Route::Sshgw) > 0 {
                row(
                    "d) sessions that failed to come up (retried)".to_owned(),
                    failed(Route::Direct).to_string(),
                    failed(Route::Sshgw).to_string(),
                    String::new(),
                    "none",
                    self.verdict(failed(Route::Sshgw) == 0),
                );
            }
            let (dr, gr) = (c.rate(Route::Direct), c.rate(Route::Sshgw));
            row(
                format!("d) session setup rate, {} in flight (sessions/s)", c.window),
                num(dr, 1),
                num(gr, 1),
                format!("{}×", num(ratio(gr, dr), 2)),
                "",
                Verdict::Info,
            );
        }
        if let Some(d) = &self.datapath {
            if let Some(c) = d.cost(datapath::CLASS_TCP) {
                row(
                    "e) TC program, non-audited bulk TCP (ns/packet)".to_owned(),
                    String::new(),
                    num(c.ns_per_packet, 1),
                    format!("{} B/packet", num(c.bytes_per_packet, 0)),
                    "≤ 100 ns",
                    self.verdict(c.ns_per_packet <= target::TC_NS_PER_PACKET),
                );
                row(
                    "e) TC program minus the hook (an empty program's cost), non-audited bulk TCP (ns/packet)".to_owned(),
                    String::new(),
                    num(c.minus_hook_ns, 1),
                    format!("empty program {} ns", num(c.empty_ns_per_packet, 1)),
                    "",
                    Verdict::Info,
                );
            }
            if let Some(c) = d.cost(datapath::CLASS_SSH_DIRECT) {
                row(
                    "e) TC program, non-audited SSH (ns/packet)".to_owned(),
                    String::new(),
                    num(c.ns_per_packet, 1),
                    format!(
                        "{} B/packet; minus the hook {} ns",
                        num(c.bytes_per_packet, 0),
                        num(c.minus_hook_ns, 1)
                    ),
                    "",
                    Verdict::Info,
                );
            }
            row(
                format!(
                    "e) forwarded TCP {}, without / with program (MiB/s)",
                    size(d.tcp_bytes)
                ),
                num(d.without_program_mib_s.median, 0),
                num(d.with_program_mib_s.median, 0),
                format!(
                    "{}× median of {} paired rounds (min–max {}–{}×; ratio of medians {}×)",
                    num(d.paired.median, 3),
                    d.paired.count,
                    num(d.paired.min, 3),
                    num(d.paired.max, 3),
                    num(d.ratio, 3)
                ),
                "≥ 0.98×",
                self.verdict(d.paired.median >= target::FORWARDED_RATIO),
            );
        }
        if let Some(b) = &self.bulk {
            for direction in Direction::ALL {
                for route in [Route::Sshgw, Route::SshgwLogged] {
                    let Some(c) = b.cpu(route, direction) else {
                        continue;
                    };
                    let plain = route == Route::Sshgw;
                    let targeted = plain && direction != Direction::Both;
                    row(
                        format!(
                            "f) CPU, {}{} (s/GiB: ssh+sshd direct vs sshgw)",
                            direction.label(),
                            if plain { "" } else { ", command logging" }
                        ),
                        num(c.direct_ssh_plus_sshd_s_per_gib, 2),
                        num(c.sshgw_s_per_gib, 2),
                        format!("{}×", num(c.ratio, 2)),
                        if targeted { "≤ 1.2×" } else { "" },
                        if targeted {
                            self.verdict(c.ratio <= target::CPU_RATIO)
                        } else {
                            Verdict::Info
                        },
                    );
                }
            }
        }
        if let Some(b) = &self.bulk_pinned {
            for r in super::pinned::rows(b) {
                let v = r.ok.map_or(Verdict::Info, |ok| self.verdict(ok));
                row(r.figure, r.direct, r.sshgw, r.comparison, r.target, v);
            }
        }
        if let Some(p) = &self.bulk_parallel {
            for r in super::pinned::parallel_rows(p) {
                let v = Verdict::Info;
                row(r.figure, r.direct, r.sshgw, r.comparison, r.target, v);
            }
        }
        if let Some(f) = &self.floor {
            for r in f.rows() {
                let v = r.ok.map_or(Verdict::Info, |ok| self.verdict(ok));
                row(r.figure, r.direct, r.sshgw, r.comparison, r.target, v);
            }
        }
        if let Some(s) = &self.scale {
            for r in super::scale::rows(s) {
                let v = r.ok.map_or(Verdict::Info, |ok| self.verdict(ok));
                row(r.figure, r.direct, r.sshgw, r.comparison, r.target, v);
            }
        }
        if let Some(p) = &self.policy {
            for r in super::policy::rows(p) {
                row(
                    r.figure,
                    r.direct,
                    r.sshgw,
                    r.comparison,
                    r.target,
                    Verdict::Info,
                );
            }
        }
        rows
    }

    /// The Results section body (no heading): provenance, the summary table, details.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Run: {} UTC, commit `{}`, `cargo xtask bench{}` ({}).  ",
            self.date.trim_end_matches('Z').replace('T', " "),
            self.git_commit.as_deref().unwrap_or("unknown"),
            if self.quick { " --quick" } else { "" },
            if self.duration_s < 120.0 {
                format!("{:.0} s", self.duration_s)
            } else {
                format!("{:.0} min", self.duration_s / 60.0)
            }
        );
        let _ = writeln!(md, "Machine: {}.  ", self.machine.summary());
        let _ = writeln!(
            md,
            "Load average before / after: {} / {}.",
            self.load_before, self.load_after
        );
        if !self.gateway_ssh.is_empty() {
            let _ = writeln!(
                md,
                "\n*sshgw ran with `[ssh]` {}, not its defaults.*",
                self.gateway_ssh
                    .iter()
                    .map(|l| format!("`{l}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if self.quick {
            let _ = writeln!(
                md,
                "\n*Quick run: the sizes only check the harness; the numbers mean nothing.*"
            );
        }
        md.push('\n');
        md.push_str("| Figure | Direct | Through sshgw | sshgw vs direct | Target | Status |\n");
        md.push_str("|---|---:|---:|---:|---|---|\n");
        for r in &self.summary {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                r.figure,
                r.direct,
                r.sshgw,
                r.comparison,
                r.target,
                r.verdict.text()
            );
        }
        let mut failures: Vec<&str> = Vec::new();
        if let Some(s) = &self.setup {
            failures.extend(s.failures.iter().map(|f| f.reason.as_str()));
        }
        if let Some(c) = &self.concurrency {
            for r in &c.ramps {
                failures.extend(r.failures.iter().map(|f| f.reason.as_str()));
                failures.extend(r.slow_snapshots.iter().map(String::as_str));
            }
        }
        if !failures.is_empty() {
            md.push_str("\n**Failed or slow connections** (first 5):\n\n");
            for f in failures.iter().take(5) {
                let _ = writeln!(md, "- {}", f.replace('\n', " "));
            }
        }
        for e in &self.errors {
            let _ = writeln!(
                md,
                "\n**{} could not be measured:** {}",
                e.figure.name(),
                e.error.replace('\n', " ")
            );
        }
        self.details(&mut md);
        super::charts::markdown(&super::charts::of_report(self), &mut md);
        md
    }

    fn details(&self, md: &mut String) {
        if let Some(b) = &self.bulk {
            let _ = writeln!(
                md,
                "\n**Bulk transfers** ({} each way, {} rounds; MiB/s median [min–max]; CPU seconds per GiB, medians)\n",
                size(b.bytes),
                b.rounds
            );
            let cores = self.machine.cores;
            b.write_table(md, |s| BulkFigure::cpu_bound_mib_s(s, cores));
            md.push_str("\nCPU seconds of an empty session (setup and teardown, included above):");
            for c in &b.setup_cpu {
                let _ = write!(
                    md,
                    " {}: ssh {}, sshd {}{};",
                    c.route.label(),
                    num(c.ssh_s, 3),
                    num(c.sshd_s, 3),
                    c.sshgw_s
                        .map_or(String::new(), |g| format!(", sshgw {}", num(g, 3)))
                );
            }
            md.pop();
            md.push_str(".\n");
            let _ = writeln!(
                md,
                "\nCPU-bound: what total CPU predicts on {} shared cores, {} / (ssh + sshd + sshgw CPU seconds per GiB).",
                self.machine.cores, self.machine.cores
            );
        }
        if let Some(b) = &self.bulk_pinned {
            super::pinned::markdown(b, md);
        }
        if let Some(p) = &self.bulk_parallel {
            super::pinned::parallel_markdown(p, md);
        }
        if let Some(f) = &self.floor {
            f.markdown(md);
        }
        if let Some(s) = &self.setup {
            let _ = writeln!(
                md,
                "\n**Negotiated on the device leg** (`ssh -v`; sshgw's server leg follows its `upstream_ciphers`, AES-GCM first by default)\n"
            );
            md.push_str(
                "| Route | Client key exchange | Key exchange | Cipher |\n|---|---|---|---|\n",
            );
            for n in &s.negotiated {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    n.route.label(),
                    if n.pinned_kex { "pinned" } else { "default" },
                    n.kex,
                    n.cipher
                );
            }
        }
        if let Some(c) = &self.concurrency {
            let _ = writeln!(
                md,
                "\n**Concurrency** (idle `ssh -tt` sessions, {} handshakes in flight)\n",
                c.window
            );
            md.push_str("| Route | Sessions | Ramp (s) | Sessions/s | Setup median / p99 (ms) | Machine memory used (MiB) |\n");
            md.push_str("|---|---:|---:|---:|---:|---:|\n");
            for r in &c.ramps {
                let _ = writeln!(
                    md,
                    "| {} | {} / {} | {} | {} | {} / {} | {} |",
                    r.route.label(),
                    r.reached,
                    r.target,
                    num(r.seconds, 1),
                    num(r.sessions_per_s, 1),
                    num(r.setup_ms.median, 0),
                    num(r.setup_ms.p99, 0),
                    num(r.machine_mib_used, 0)
                );
            }
            if let Some(g) = c.last(Route::Sshgw) {
                md.push_str("\n| sshgw at N sessions | RSS (MiB) | fds | threads |\n");
                md.push_str("|---:|---:|---:|---:|\n");
                for m in &g.memory {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} |",
                        m.sessions,
                        num(m.rss_mib, 1),
                        m.fds,
                        m.threads
                    );
                }
            }
        }
        if let Some(s) = &self.scale {
            super::scale::markdown(s, md);
        }
        if let Some(d) = &self.datapath {
            let _ = writeln!(
                md,
                "\n**TC program cost** (`bpf_stats_enabled`, r0 ingress; a packet is one skb, GSO included)\n"
            );
            md.push_str(
                "| Traffic | Packets | ns/packet | Bytes/packet | Empty program (ns/packet) | Minus the hook (ns/packet) |\n",
            );
            md.push_str("|---|---:|---:|---:|---:|---:|\n");
            for c in &d.costs {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    c.class,
                    c.run_cnt,
                    num(c.ns_per_packet, 1),
                    num(c.bytes_per_packet, 0),
                    num(c.empty_ns_per_packet, 1),
                    num(c.minus_hook_ns, 1)
                );
            }
            let _ = writeln!(
                md,
                "\nThe empty program (TCX on r0 while sshgw is stopped) counted {}; the intercepted class is set against its non-audited SSH figure.",
                d.empty_costs
                    .iter()
                    .map(|c| format!(
                        "{} packets of {} ({} B/packet)",
                        c.run_cnt,
                        c.class,
                        num(c.bytes_per_packet, 0)
                    ))
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
            let _ = writeln!(
                md,
                "\n**Forwarded TCP** ({} per sample), with / without the program per round: {}; with the empty program / without: {}\n",
                size(d.tcp_bytes),
                d.paired
                    .samples
                    .iter()
                    .map(|r| format!("{}×", num(*r, 3)))
                    .collect::<Vec<_>>()
                    .join(", "),
                d.empty_paired
                    .samples
                    .iter()
                    .map(|r| format!("{}×", num(*r, 3)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            md.push_str("| Paired ratio | Median | Q1–Q3 | Min–max |\n|---|---:|---:|---:|\n");
            let _ = writeln!(
                md,
                "| with / without | {}× | {}–{}× | {}–{}× |",
                num(d.paired.median, 3),
                num(d.paired_q1, 3),
                num(d.paired_q3, 3),
                num(d.paired.min, 3),
                num(d.paired.max, 3)
            );
        }
        if let Some(p) = &self.policy {
            super::policy::markdown(p, md);
        }
        for p in &self.profiles {
            let _ = writeln!(
                md,
                "\n**Profile** of sshgw, {} {} ({} samples, {:.0} MiB/s during the profile; self time)\n",
                p.route.label(),
                p.direction.label(),
                p.samples,
                p.transfer.mib_per_s
            );
            md.push_str("| % | Object | Symbol |\n|---:|---|---|\n");
            for e in p.top.iter().take(10) {
                let _ = writeln!(
                    md,
                    "| {:.1} | {} | `{}` |",
                    e.percent,
                    e.dso,
                    e.symbol.replace('|', "\\|")
                );
            }
        }
    }

    /// Writes `report.json`, `report.md`, `results.md` and the charts (`images/bench-*.svg`)
    /// into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let body = self.markdown();
        let md = dir.join("report.md");
        std::fs::write(&md, format!("# sshgw benchmark\n\n{body}"))
            .with_context(|| format!("writing {}", md.display()))?;
        let results = dir.join("results.md");
        std::fs::write(&results, body).with_context(|| format!("writing {}", results.display()))?;
        super::charts::write(&super::charts::of_report(self), dir)?;
        Ok(())
    }
}
