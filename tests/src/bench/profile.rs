//! `--profile`: samples sshgw with `perf record` during one bulk transfer through the
//! gateway and keeps `perf report`'s flat top-N (self time per symbol).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde::Serialize;

use super::bulk::{BulkSample, Direction, Transfer};
use super::env::{BenchEnv, Route};

/// Sampling frequency (Hz); odd so it does not beat with periodic work.
const FREQUENCY: &str = "499";

#[derive(Debug, Clone, Serialize)]
pub struct ProfileEntry {
    pub percent: f64,
    pub dso: String,
    pub symbol: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub route: Route,
    pub direction: Direction,
    pub transfer: BulkSample,
    pub samples: u64,
    pub top: Vec<ProfileEntry>,
    /// `perf report --stdio`: the flat profile, and the callers of each symbol above 2%.
    pub flat_report: PathBuf,
    pub graph_report: PathBuf,
}

fn perf() -> Result<PathBuf> {
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.into_iter()
        .map(|d| d.join("perf"))
        .find(|p| p.is_file())
        .context("perf is not installed (Debian package linux-perf)")
}

fn report(perf: &Path, data: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(perf)
        .args(["report", "--stdio", "-i"])
        .arg(data)
        .args(args)
        .output()
        .context("running perf report")?;
    if !out.status.success() {
        bail!(
            "perf report failed: {}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses `perf report --sort dso,symbol -g none` lines: `  12.34%  sshgw  [.] symbol`.
fn parse_flat(text: &str) -> Vec<ProfileEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let (pct, rest) = line.split_once('%')?;
            let percent: f64 = pct.trim().parse().ok()?;
            let rest = rest.trim();
            let (dso, symbol) = rest.split_once(char::is_whitespace)?;
            let symbol = symbol.trim();
            let symbol = symbol
                .strip_prefix("[.]")
                .or_else(|| symbol.strip_prefix("[k]"))
                .unwrap_or(symbol)
                .trim();
            // Anything after a run of spaces is another column.
            let symbol = symbol.split("  ").next().unwrap_or(symbol).trim();
            Some(ProfileEntry {
                percent,
                dso: dso.to_owned(),
                symbol: symbol.to_owned(),
            })
        })
        .collect()
}

/// Sums the sample column of `perf report -n --sort dso --fields sample,dso` (the header's
/// `# Samples: 3K` is rounded).
fn sample_count(text: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

pub fn run(
    env: &BenchEnv<'_>,
    out_dir: &Path,
    route: Route,
    direction: Direction,
    bytes: u64,
    log: &dyn Fn(&str),
) -> Result<Profile> {
    let perf = perf()?;
    let pid = env.sshgw_pid()?;
    let stem = format!(
        "perf-{}-{}",
        route.label().replace('+', "-"),
        direction.label()
    );
    let data = out_dir.join(format!("{stem}.data"));
    let mut cmd = Command::new(&perf);
    cmd.args([
        "record",
        "-F",
        FREQUENCY,
        "--call-graph",
        "dwarf,16384",
        "-p",
    ])
    .arg(pid.to_string())
    .arg("-o")
    .arg(&data);
    let rec = env.lab.procs().spawn("perf record", &mut cmd)?;
    // perf prints nothing once attached; give it a moment to open its events.
    std::thread::sleep(Duration::from_millis(500));
    let transfer = Transfer {
        route,
        direction,
        bytes,
    }
    .run(env, 0)?;
    rec.signal(Signal::SIGINT)?;
    rec.wait_exit(Duration::from_secs(120))
        .context("perf record did not finish")?;

    let flat = report(
        &perf,
        &data,
        &[
            "--no-children",
            "-g",
            "none",
            "--sort",
            "dso,symbol",
            "--fields",
            "overhead,dso,sym",
            "--percent-limit",
            "0.3",
        ],
    )?;
    let graph = report(
        &perf,
        &data,
        &[
            "--no-children",
            "--sort",
            "dso,symbol",
            "-g",
            "callee,0.5,2",
            "--percent-limit",
            "2",
        ],
    )?;
    let flat_report = out_dir.join(format!("{stem}.txt"));
    let graph_report = out_dir.join(format!("{stem}-graph.txt"));
    std::fs::write(&flat_report, &flat)?;
    std::fs::write(&graph_report, &graph)?;
    let samples = sample_count(&report(
        &perf,
        &data,
        &[
            "-n",
            "--sort",
            "dso",
            "--fields",
            "sample,dso",
            "-g",
            "none",
        ],
    )?);
    let mut top = parse_flat(&flat);
    top.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    top.truncate(25);
    log(&format!(
        "profile ({} {}): {samples} samples, top: {}",
        route.label(),
        direction.label(),
        top.iter()
            .take(3)
            .map(|e| format!("{:.1}% {}", e.percent, e.symbol))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(Profile {
        route,
        direction,
        transfer,
        samples,
        top,
        flat_report,
        graph_report,
    })
}
