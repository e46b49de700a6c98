//! `cargo xtask lab`: the whole job end to end in a lab that stays up for an interactive try.
//!
//! Steps: prerequisites (installs what is missing), the eBPF object, the debug `sshgw` (the
//! same build `cargo xtask test` uses, so nothing is rebuilt between the two), the `sshgw-lab`
//! binary of the sshgw-tests crate, then `sshgw-lab up`. That creates the device, router and
//! server namespaces `sgwlab-dev|rtr|srv` with sshd trusting the sshgw user CA, starts sshgw
//! with the demo device table and an audit policy with command logging, runs a scripted
//! `ssh jdoe@203.0.113.10` on a terminal from the device, prints the session log, replays the
//! decrypted recording and prints copy-paste commands (also saved in
//! `/var/tmp/sshgw-lab/try-it.txt`). Everything it creates is listed in
//! `/var/tmp/sshgw-lab/lab-state.json`.
//!
//! * A second `cargo xtask lab` while a lab is up tears the old one down first (same fixed
//!   names), then builds a fresh one: the command always ends with a lab in a known state.
//! * `--down` removes everything the lab created: its processes (by recorded PID), BPF pins,
//!   namespaces (with their routes and rules) and directories. Safe to run twice.
//! * `--wireguard`: the device reaches the router through a real WireGuard tunnel
//!   (boringtun and `wg-quick`), set up as the worked example in docs/deployment.md says;
//!   sshgw attaches to `wg0` and the device table holds the device's tunnel address.
//! * `--ci` (or `CI=true`): unique names and a temporary state dir, so it can run beside an
//!   interactive lab or the netns tests; checks that the replay shows the typed output and
//!   the session log has the session, tears the lab down and exits non-zero on any failure.
//!
//! Needs root (network namespaces, eBPF, sshd). See `tests/src/bin/sshgw-lab.rs` and
//! `tests/src/persist.rs` for how the lab outlives the command.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{ebpf, prereqs, util};

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Non-interactive: unique names, check the replay and the session log, tear the lab
    /// down, exit non-zero on any failure. Implied by the environment variable CI=true.
    #[arg(long)]
    pub ci: bool,

    /// Tear down the lab that `cargo xtask lab` left up (processes, namespaces, BPF pins,
    /// /var/tmp/sshgw-lab). Safe to run twice.
    #[arg(long, conflicts_with = "ci")]
    pub down: bool,

    /// The device reaches the router through a real WireGuard tunnel (boringtun, wg-quick),
    /// set up as the worked example in docs/deployment.md says.
    #[arg(long, conflicts_with = "down")]
    pub wireguard: bool,
}

/// The interactive lab's name: namespaces `sgwlab-dev|rtr|srv`, pins `/sys/fs/bpf/sgwlab`.
pub const LAB_NAME: &str = "sgwlab";
/// The interactive lab's state dir (state file, keys, config link, recordings, lab dir).
pub const STATE_DIR: &str = "/var/tmp/sshgw-lab";

const LAB_PACKAGE: &str = "sshgw-tests";
const LAB_BIN: &str = "sshgw-lab";
const GATEWAY_PACKAGE: &str = "sshgw";
/// Tells the lab binary when this command started, for its time-to-replay figure.
const T0_ENV: &str = "SSHGW_LAB_T0_MS";
const NETNS_RUN_DIR: &str = "/run/netns";
const BPF_PIN_ROOT: &str = "/sys/fs/bpf";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Prereqs,
    BuildEbpf,
    BuildGateway,
    BuildLab,
    Lab,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Prereqs => "prereqs",
            Step::BuildEbpf => "build-ebpf",
            Step::BuildGateway => "build sshgw (debug)",
            Step::BuildLab => "build the lab binary (sshgw-lab)",
            Step::Lab => "the lab (sshgw-lab up)",
        }
    }
}

const PLAN: [Step; 5] = [
    Step::Prereqs,
    Step::BuildEbpf,
    Step::BuildGateway,
    Step::BuildLab,
    Step::Lab,
];

/// `CI` set to anything but empty, `0` or `false`.
fn ci_from_env(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false")
    })
}

fn lab_bin(target_dir: &Path) -> PathBuf {
    target_dir.join("debug").join(LAB_BIN)
}

fn sshgw_bin(target_dir: &Path) -> PathBuf {
    target_dir.join("debug").join("sshgw")
}

fn require_root(what: &str) -> Result<()> {
    let euid = util::effective_uid()?;
    if euid != 0 {
        bail!(
            "{what} needs root (running as uid {euid}): it creates network namespaces, loads \
             the eBPF datapath and runs sshd; run it as root (e.g. `sudo -E cargo xtask lab`)"
        );
    }
    Ok(())
}

pub fn run(args: &LabArgs) -> Result<()> {
    let start = Instant::now();
    let t0_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let root = util::workspace_root()?;
    let target_dir = util::target_dir(&root);
    if args.down {
        require_root("cargo xtask lab --down")?;
        return down(&root, &target_dir);
    }
    let ci = args.ci || ci_from_env(std::env::var("CI").ok().as_deref());
    require_root("cargo xtask lab")?;
    if ci {
        println!("[lab] non-interactive (--ci or CI=true): the lab is torn down at the end");
    }

    let mut prereqs = None;
    let mut timings: Vec<(Step, Duration)> = Vec::new();
    for (i, &step) in PLAN.iter().enumerate() {
        println!("\n==> [{}/{}] {}", i + 1, PLAN.len(), step.name());
        let step_start = Instant::now();
        let result = match step {
            Step::Prereqs => prereqs::ensure().map(|p| prereqs = Some(p)),
            Step::BuildEbpf => {
                let p = prereqs.as_ref().context("prereqs step did not complete")?;
                ebpf::build(&root, p).map(drop)
            }
            Step::BuildGateway => build_gateway(&root, &target_dir),
            Step::BuildLab => build_lab(&root, &target_dir),
            Step::Lab => run_lab(&target_dir, ci, args.wireguard, t0_ms),
        };
        let elapsed = step_start.elapsed();
        if let Err(err) = result {
            println!(
                "==> [{}/{}] {} FAILED after {}",
                i + 1,
                PLAN.len(),
                step.name(),
                util::format_duration(elapsed)
            );
            return Err(err.context(format!("cargo xtask lab: step {} failed", step.name())));
        }
        if step != Step::Lab {
            println!(
                "==> {} done in {}",
                step.name(),
                util::format_duration(elapsed)
            );
        }
        timings.push((step, elapsed));
    }
    let steps: Vec<String> = timings
        .iter()
        .map(|(step, d)| format!("{} {}", step.name(), util::format_duration(*d)))
        .collect();
    println!(
        "\n[lab] {} in {} ({})",
        if ci { "CI run passed" } else { "lab up" },
        util::format_duration(start.elapsed()),
        steps.join(", ")
    );
    Ok(())
}

fn build_gateway(root: &Path, target_dir: &Path) -> Result<()> {
    crate::console::build(root)?;
    // The same command as `cargo xtask test`: a warm tree rebuilds nothing.
    util::run(
        util::host_cargo()
            .args(["build", "--package", GATEWAY_PACKAGE])
            .current_dir(root),
    )?;
    let bin = sshgw_bin(target_dir);
    if !util::is_executable(&bin) {
        bail!(
            "`cargo build --package sshgw` finished but {} is missing",
            bin.display()
        );
    }
    Ok(())
}

fn build_lab(root: &Path, target_dir: &Path) -> Result<()> {
    // A separate invocation from the sshgw build: building both packages in one cargo run
    // would unify their dependencies' features differently and rebuild sshgw every time.
    util::run(
        util::host_cargo()
            .args(["build", "--package", LAB_PACKAGE, "--bin", LAB_BIN])
            .current_dir(root),
    )?;
    let bin = lab_bin(target_dir);
    if !util::is_executable(&bin) {
        bail!(
            "`cargo build --package {LAB_PACKAGE} --bin {LAB_BIN}` finished but {} is missing",
            bin.display()
        );
    }
    Ok(())
}

fn run_lab(target_dir: &Path, ci: bool, wireguard: bool, t0_ms: u128) -> Result<()> {
    let sshgw = sshgw_bin(target_dir);
    let sshgw = sshgw
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", sshgw.display()))?;
    let mut cmd = Command::new(lab_bin(target_dir));
    cmd.arg("up");
    if ci {
        cmd.arg("--ci");
    } else {
        cmd.args(["--name", LAB_NAME, "--state-dir", STATE_DIR]);
    }
    if wireguard {
        cmd.arg("--wireguard");
    }
    cmd.env("SSHGW_BIN", &sshgw)
        .env(T0_ENV, t0_ms.to_string())
        .env(prereqs::S3_VENV_ENV, prereqs::s3_venv()?);
    util::run(&mut cmd)
}

/// Whether anything of the interactive lab is there.
fn lab_is_up() -> bool {
    Path::new(STATE_DIR).exists()
        || ["dev", "rtr", "srv"].iter().any(|role| {
            Path::new(NETNS_RUN_DIR)
                .join(format!("{LAB_NAME}-{role}"))
                .exists()
        })
        || Path::new(BPF_PIN_ROOT).join(LAB_NAME).exists()
}

fn down(root: &Path, target_dir: &Path) -> Result<()> {
    if !lab_is_up() {
        println!(
            "[lab] no lab is up (no {STATE_DIR}, no {LAB_NAME}-dev|rtr|srv namespaces, no \
             {BPF_PIN_ROOT}/{LAB_NAME}): nothing to do"
        );
        return Ok(());
    }
    let bin = lab_bin(target_dir);
    if let Err(err) = build_lab(root, target_dir) {
        // A teardown must not depend on the tree compiling right now.
        if util::is_executable(&bin) {
            eprintln!(
                "[lab] warning: {err:#}; tearing down with the existing {}",
                bin.display()
            );
        } else {
            return Err(err);
        }
    }
    util::run(
        Command::new(&bin)
            .arg("down")
            .args(["--name", LAB_NAME, "--state-dir", STATE_DIR]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_environment_values() {
        assert!(ci_from_env(Some("true")));
        assert!(ci_from_env(Some("1")));
        assert!(ci_from_env(Some("yes")));
        assert!(!ci_from_env(Some("")));
        assert!(!ci_from_env(Some("0")));
        assert!(!ci_from_env(Some("FALSE")));
        assert!(!ci_from_env(None));
    }

    #[test]
    fn plan_builds_before_the_lab() {
        assert_eq!(PLAN.last(), Some(&Step::Lab));
        assert_eq!(PLAN.first(), Some(&Step::Prereqs));
    }

    #[test]
    fn fixed_names_fit_the_lab_binary() {
        // The lab binary accepts names of at most 10 characters (namespace name length).
        assert!(LAB_NAME.len() <= 10);
        assert!(Path::new(STATE_DIR).is_absolute());
    }
}
