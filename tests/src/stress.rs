//! Stress helpers: a core kept busy for the length of a test, and a no-progress watchdog for
//! long transfers.
//!
//! The watchdog is not a timing assertion: a transfer may take as long as it needs, but if
//! none of the files it writes grows for [`STALL_LIMIT`] while its processes still run, it is
//! frozen. The failure then shows the router's TCP queues (`ss -tni`): a relay whose session
//! loops stopped reading leaves unread bytes in the Recv-Q of its sockets.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::gateway::Gateway;
use crate::netns::Netns;
use crate::process::Proc;
use crate::topology::Lab;

/// How long a transfer may make no progress at all before it counts as frozen. Generous: a
/// debug build on a loaded two-core machine is slow, but never silent for this long.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// How often the watchdog looks.
const POLL: Duration = Duration::from_millis(250);

/// A process spinning on one core for as long as this value lives (also killed with the lab).
pub struct BusyCore {
    proc: Proc,
}

impl BusyCore {
    pub fn start(lab: &Lab) -> Result<Self> {
        let proc = lab.procs().spawn(
            "busy core",
            std::process::Command::new("sh").args(["-c", "while :; do :; done"]),
        )?;
        Ok(BusyCore { proc })
    }
}

impl Drop for BusyCore {
    fn drop(&mut self) {
        let _ = self.proc.kill();
    }
}

/// Total size of the files that exist (missing ones count as empty).
fn total_size(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// What the router's sockets hold, and the daemon's last log lines: the evidence of a stall.
pub fn stall_report(lab: &Lab, gw: Option<&Gateway<'_>>) -> String {
    let mut report = socket_queues(&lab.rtr);
    if let Some(gw) = gw {
        let log = gw.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        report.push_str("\n--- daemon log (last lines)\n");
        for line in tail.into_iter().rev() {
            report.push_str(line);
            report.push('\n');
        }
    }
    report
}

/// `ss -tni` in `ns`.
pub fn socket_queues(ns: &Netns) -> String {
    match ns.exec_command("ss").args(["-tni"]).output() {
        Ok(out) => format!(
            "$ ss -tni (netns {})\n{}{}",
            ns.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("ss -tni failed: {e}"),
    }
}

/// Waits until every process in `procs` has exited, failing as soon as none of `files` grew
/// for [`STALL_LIMIT`] while one still runs. `what` names the transfer in errors.
pub fn wait_with_progress(
    lab: &Lab,
    gw: Option<&Gateway<'_>>,
    what: &str,
    procs: &[&Proc],
    files: &[&Path],
) -> Result<()> {
    let files: Vec<PathBuf> = files.iter().map(|f| f.to_path_buf()).collect();
    let mut last = total_size(&files);
    let mut since = Instant::now();
    loop {
        let mut running = false;
        for proc in procs {
            running |= proc.try_status()?.is_none();
        }
        if !running {
            return Ok(());
        }
        let size = total_size(&files);
        if size != last {
            last = size;
            since = Instant::now();
        } else if since.elapsed() >= STALL_LIMIT {
            bail!(
                "{what}: frozen, no progress for {STALL_LIMIT:?} at {size} bytes\n{}",
                stall_report(lab, gw)
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The value of an unlabelled sample `name` in the daemon's `/metrics`.
pub fn metric(gw: &Gateway<'_>, name: &str) -> Result<f64> {
    let reply = gw.api_bytes("GET", "/metrics", None)?;
    anyhow::ensure!(reply.status == 200, "GET /metrics: {reply:?}");
    let prefix = format!("{name} ");
    let line = reply
        .body
        .lines()
        .find(|l| l.starts_with(&prefix))
        .ok_or_else(|| anyhow::anyhow!("no sample {name} in /metrics"))?;
    Ok(line[prefix.len()..].trim().parse()?)
}

/// The sum over every labelled sample of `name` in the daemon's `/metrics` (0 if none).
pub fn metric_labelled(gw: &Gateway<'_>, name: &str) -> Result<f64> {
    let reply = gw.api_bytes("GET", "/metrics", None)?;
    anyhow::ensure!(reply.status == 200, "GET /metrics: {reply:?}");
    let prefix = format!("{name}{{");
    let mut sum = 0.0;
    for line in reply.body.lines().filter(|l| l.starts_with(&prefix)) {
        if let Some(value) = line.rsplit(' ').next() {
            sum += value.parse::<f64>()?;
        }
    }
    Ok(sum)
}
